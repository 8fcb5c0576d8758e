"""The interactive API docs (/schema/swagger), served whole from the installed package.

Litestar's render plugins load Swagger UI from a public CDN and start it with an inline
script, so on a machine without internet the page stays blank, and a Content-Security-
Policy of 'self' would block it anyway. This page references only files under
/schema/assets/, served from assets/ here: Swagger UI's own files (swagger-ui-dist,
vendored with its licence by exchange/http/api_docs/vendor-swagger-ui) and swagger-initializer.js,
which starts it on the OpenAPI document. No inline script or style, no external URL.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from litestar import Request, Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.static_files import create_static_files_router

ASSETS_DIR = Path(__file__).parent / "assets"
ASSETS_PATH = "/assets"  # under the OpenAPI router's /schema
# The assets change only with the package: a day's caching spares reloads, and a new
# version is fetched within a day of an upgrade.
ASSETS_CACHE = CacheControlHeader(public=True, max_age=86_400)


class SwaggerPage(OpenAPIRenderPlugin):
    """Swagger UI at /schema/swagger, on the vendored assets. Its Authorize button logs in
    with the OAuth2 password flow the document declares (no redirect page needed)."""

    def __init__(self, path: str = "/swagger") -> None:
        super().__init__(path=path, favicon="", style="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        assets = request.app.route_reverse("docs_assets", file_path="").rstrip("/") + "/"
        title = escape(str(openapi_schema["info"]["title"]))
        spec_url = escape(self.get_openapi_json_route(request))
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API</title>
  <link rel="icon" href="{assets}favicon.svg">
  <link rel="stylesheet" href="{assets}swagger-ui/swagger-ui.css">
  <link rel="stylesheet" href="{assets}docs.css">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec_url}"></div>
  <script src="{assets}swagger-ui/swagger-ui-bundle.js"></script>
  <script src="{assets}swagger-initializer.js"></script>
</body>
</html>
""".encode()

    def receive_router(self, router: Router) -> None:
        router.register(
            create_static_files_router(
                ASSETS_PATH, directories=[ASSETS_DIR], name="docs_assets", cache_control=ASSETS_CACHE
            )
        )
