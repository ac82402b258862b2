"""The dashboard page (SPEC §5 `GET /` and `GET /dashboard`) and the files it loads.

- `GET /`, `GET /dashboard`: `api/static/dashboard.html`, read once per process. The page
  holds no data and needs no key: it asks for the read key in the browser (kept in
  localStorage) and calls the `/v1/...` endpoints with `Authorization: Bearer <key>`.
- `GET /static/plotly.min.js`: the chart library, served from the installed `plotly`
  PyPI package (`plotly/package_data/plotly.min.js`); nothing third-party is copied into
  this repository and nothing is loaded from a CDN. Cached for a year (`immutable`): the
  page asks for it as `?v=<plotly package version>`, so an upgrade changes the URL. Sent
  gzip-compressed (about 1.4 MB instead of 4.8 MB) when the client accepts it; the
  compressed copy is made once, on first request.
- `GET /static/{name}`: the page's own `dashboard.js` / `dashboard.css`, by a fixed list of
  names (never a path taken from the request), also long-cached under `?v=<content hash>`.

Every asset has a strong ETag and answers `If-None-Match` with 304. The page carries a
Content-Security-Policy that allows scripts from this origin only (no inline scripts); it
allows inline styles because plotly.js sets element styles and injects its stylesheet.

Failure mode: a missing `plotly` package makes the library route answer 503 with the
install hint (the page then shows its own "chart library unavailable" banner); the rest
of the API is unaffected.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["dashboard"])

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
PAGE_FILE: Final = "dashboard.html"
# The only files of api/static the router will send, with their media types.
OWN_ASSETS: Final[dict[str, str]] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PLOTLY_ASSET: Final = "plotly.min.js"

LONG_CACHE: Final = "public, max-age=31536000, immutable"
PAGE_CACHE: Final = "no-cache"  # revalidate: the page names the current asset versions
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: Final[dict[str, str]] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    gzipped: bytes | None = None

    @classmethod
    def of(cls, body: bytes, media_type: str, *, compress: bool = False) -> Asset:
        digest = hashlib.sha256(body).hexdigest()[:20]
        # mtime=0: the same bytes every time, so every replica sends the same encoding.
        packed = gzip.compress(body, compresslevel=6, mtime=0) if compress else None
        return cls(body, media_type, f'"{digest}"', packed)


def plotly_version() -> str:
    try:
        return importlib.metadata.version("plotly")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@cache
def plotly_asset() -> Asset:
    """plotly.js as shipped inside the installed `plotly` package. Raises FileNotFoundError
    when the package (or its bundled file) is not installed."""
    try:
        resource = importlib.resources.files("plotly") / "package_data" / PLOTLY_ASSET
        body = resource.read_bytes()
    except ModuleNotFoundError as exc:
        raise FileNotFoundError("the plotly package is not installed") from exc
    return Asset.of(body, "text/javascript; charset=utf-8", compress=True)


@cache
def own_asset(name: str) -> Asset:
    return Asset.of((STATIC_DIR / name).read_bytes(), OWN_ASSETS[name], compress=True)


@cache
def page() -> Asset:
    """The page with its asset URLs versioned (`__PLOTLY_VERSION__`, `__ASSET_VERSION__`)."""
    html = (STATIC_DIR / PAGE_FILE).read_text(encoding="utf-8")
    own = hashlib.sha256(b"".join(own_asset(name).body for name in sorted(OWN_ASSETS)))
    html = html.replace("__PLOTLY_VERSION__", plotly_version()).replace(
        "__ASSET_VERSION__", own.hexdigest()[:12]
    )
    return Asset.of(html.encode(), "text/html; charset=utf-8")


def _send(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {"ETag": asset.etag, "Cache-Control": cache_control, **SECURITY_HEADERS}
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    if asset.etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    if asset.gzipped is not None and _accepts_gzip(request.headers.get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            quality = params.strip().removeprefix("q=").strip()
            return quality == "" or _positive(quality)
    return False


def _positive(quality: str) -> bool:
    try:
        return float(quality) > 0
    except ValueError:
        return False


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
@router.get("/dashboard", response_class=HTMLResponse, summary="The dashboard page")
def dashboard(request: Request) -> Response:
    response = _send(request, page(), PAGE_CACHE)
    if response.status_code == 200:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@router.get("/static/" + PLOTLY_ASSET, include_in_schema=False)
def plotly_js(request: Request) -> Response:
    try:
        asset = plotly_asset()
    except FileNotFoundError as exc:
        raise HTTPException(
            503, "plotly.min.js comes from the `plotly` Python package: pip install plotly"
        ) from exc
    return _send(request, asset, LONG_CACHE)


@router.get("/static/{name}", include_in_schema=False)
def static_asset(name: str, request: Request) -> Response:
    if name not in OWN_ASSETS:
        raise HTTPException(404, "not found")
    return _send(request, own_asset(name), LONG_CACHE)
