"""The dashboard router without a browser: the page, the chart library from the installed
`plotly` package, the page's own assets, caching and the refusal of other paths."""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.resources
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from api.routes import dashboard


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(dashboard.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        yield http


@pytest.mark.parametrize("path", ["/", "/dashboard"])
async def test_page(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "connect-src 'self';" in policy
    html = response.text
    version = importlib.metadata.version("plotly")
    assert f'src="/static/plotly.min.js?v={version}"' in html
    assert "__VERSION__" not in html
    # No CDN (no absolute or protocol-relative URL) and no inline script.
    assert "//" not in html
    assert "<script>" not in html


async def test_plotly_comes_from_the_installed_package(client: httpx.AsyncClient) -> None:
    shipped = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    response = await client.get("/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.content == shipped
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-encoding" not in response.headers

    packed = await client.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.headers["vary"] == "Accept-Encoding"
    assert int(packed.headers["content-length"]) < len(shipped) / 2
    assert packed.content == shipped  # httpx decodes it; the bytes are the package's

    etag = response.headers["etag"]
    cached = await client.get("/static/plotly.min.js", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""


async def test_gzip_refused_with_q_zero(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/dashboard.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in response.headers


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")],
)
async def test_own_assets(client: httpx.AsyncClient, name: str, media_type: str) -> None:
    response = await client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (dashboard.STATIC_DIR / name).read_bytes()
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/static/dashboard.html",
        "/static/app.py",
        "/static/..%2Fapp.py",
        "/static/%2e%2e%2froutes%2fdashboard.py",
        "/static/../routes/dashboard.py",
        "/static/",
        "/static/DASHBOARD.JS",
    ],
)
async def test_other_paths_are_not_served(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


def test_own_assets_are_compressed_once() -> None:
    asset = dashboard.own_asset("dashboard.js")
    assert asset.gzipped is not None
    assert gzip.decompress(asset.gzipped) == asset.body
