"""``/openapi.json`` and the API reference page ``/docs``, every file of it served from here.

The renderer is Swagger UI from the pinned ``swagger-ui-bundle-v2`` wheel (Apache-2.0), which
ships its built files: nothing is vendored into this repository and nothing is fetched from a
CDN, so the page works offline. The page's Content-Security-Policy keeps it that way.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .openapi import DOCS_ASSETS, openapi_json

PAGE_DIR = Path(__file__).with_name("docs")
# Swagger UI styles elements inline and draws icons as data: URLs; scripts only from this origin.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
ASSET_TYPES = {".js": "application/javascript", ".css": "text/css", ".png": "image/png"}


def _swagger_ui_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path  # the pinned wheel's built files

    return Path(str(swagger_ui_path))


@lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    directory = PAGE_DIR if (PAGE_DIR / name).is_file() else _swagger_ui_dir()
    return (directory / name).read_bytes()


async def openapi_document(request: Request) -> Response:
    return Response(openapi_json(), media_type="application/json")


async def docs_page(request: Request) -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})


async def docs_asset(request: Request) -> Response:
    asset = request.path_params["asset"]
    if asset not in DOCS_ASSETS:  # a fixed list: never a path built from the request
        return JSONResponse({"detail": "File not found"}, status_code=404)
    media_type = ASSET_TYPES[Path(asset).suffix]
    return Response(_asset(asset), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
