"""One router per resource of SPEC §5 (and the dashboard page); api/app.py includes them.

Routes carry their full paths (no router prefix): this FastAPI resolves included routers
lazily and hands the middleware the router's own route, so the path it labels metrics
with must be the whole one."""
