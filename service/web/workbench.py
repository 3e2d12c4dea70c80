"""The web workbench: the static files of ``workbench/`` (one page, one script, one stylesheet),
served at ``/``, ``/workbench.js`` and ``/workbench.css``.

Three explicit routes rather than a catch-all mount at ``/``, which would answer 404 instead of
405 for a known path with the wrong method. The page only talks to this origin (its CSP says so).
"""
from __future__ import annotations

import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("ray.serve")

WORKBENCH_DIR = Path(__file__).resolve().parents[2] / "workbench"
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/workbench.js": ("workbench.js", "text/javascript; charset=utf-8"),
         "/workbench.css": ("workbench.css", "text/css; charset=utf-8")}
# The page holds an API key: no framing by other sites, no referrer, nothing loaded from elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data: http: https:; "
                               "connect-src 'self' blob: http: https:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag), so an upgraded service serves its own page
}


def workbench_routes(directory: Path = WORKBENCH_DIR) -> list[Route]:
    if not (directory / "index.html").is_file():
        log.warning("no workbench at %s: GET / answers 404 (set `workbench: false` to silence this)", directory)
        return []

    def serve(filename: str, media_type: str):
        async def endpoint(request: Request) -> Response:
            path = directory / filename
            if not path.is_file():
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return FileResponse(path, media_type=media_type, headers=PAGE_HEADERS)
        endpoint.__name__ = f"workbench_{filename.replace('.', '_')}"
        return endpoint

    return [Route(route, serve(filename, media_type), methods=["GET"])
            for route, (filename, media_type) in FILES.items()]
