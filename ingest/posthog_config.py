"""Answers to the calls posthog-js makes before and beside capturing, so that a page's SDK
starts, sends its events to `/e/` and never waits on or loads anything else.

posthog-js 1.x first fetches its remote config, `GET /array/<token>/config` (builds that
can load code fetch the script `/array/<token>/config.js` instead), and asks for feature
flags with `POST /flags/?v=2` (older versions: `/decide/?v=3`; GET works too). The
gateway has no feature flags, surveys, session recording, heatmaps or site apps, so every
answer says "none" in the shapes posthog-js parses, and offers gzip-js and base64 capture
bodies (it picks gzip-js). `hasFeatureFlags: false` spares the page the flags call on
load; an explicit `reloadFeatureFlags()` still gets an empty set.

No write key is checked here: the answers are the same constants for every token and
reveal nothing of a project, and a page with a wrong key should fail where it matters, at
capture (401), not stall before it. Request bodies are not read.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response

# The remote-config fields posthog-js reads; "off" for every feature the gateway lacks.
# `autocapture_opt_out` stays false so that the page's own `autocapture` option decides.
_FEATURES: Final[dict[str, Any]] = {
    "supportedCompression": ["gzip-js", "base64"],
    "autocapture_opt_out": False,
    "autocaptureExceptions": False,
    "captureDeadClicks": False,
    "capturePerformance": False,
    "elementsChainAsString": True,
    "heatmaps": False,
    "sessionRecording": False,
    "siteApps": [],
    "surveys": False,
}
_NO_FLAGS: Final[dict[str, Any]] = {
    "flags": {},
    "featureFlags": {},
    "featureFlagPayloads": {},
    "errorsWhileComputingFlags": False,
    "quotaLimited": [],
}
# /decide/ answered flags and the config in one document; /flags/ v2 reads the flag keys.
_FLAGS_BODY: Final = orjson.dumps(
    {
        **_FEATURES,
        **_NO_FLAGS,
        "config": {"enable_collect_everything": True},
        "isAuthenticated": False,
        "toolbarParams": {},
    }
)


def _config(token: str) -> dict[str, Any]:
    return {"token": token, "hasFeatureFlags": False, **_FEATURES}


async def flags(_: Request) -> Response:
    """`/flags/` and `/decide/`, any method and query: no flags."""
    return Response(_FLAGS_BODY, media_type="application/json")


async def remote_config(request: Request) -> Response:
    """`GET /array/{token}/config`: the remote config as JSON."""
    return Response(
        orjson.dumps(_config(request.path_params["token"])), media_type="application/json"
    )


async def remote_config_js(request: Request) -> Response:
    """`GET /array/{token}/config.js`: the same config as the script posthog-js's loader
    runs, which only stores it where the SDK looks (`window._POSTHOG_REMOTE_CONFIG`); the
    token is embedded as a JSON string, so no path can inject code."""
    token = request.path_params["token"]
    config = orjson.dumps({"config": _config(token), "siteApps": []}).decode()
    script = (
        "(function(){var all=window._POSTHOG_REMOTE_CONFIG=window._POSTHOG_REMOTE_CONFIG||{};"
        f"all[{orjson.dumps(token).decode()}]={config};}})();\n"
    )
    return Response(script, media_type="application/javascript")
