"""The web page: `/` (upload a video or open the camera, watch the sounding object light up) and its assets.

Plain ES modules and CSS in `app/web/static/`, served as they are: no build step, nothing to install, and
the page talks to the same API as every other client (`POST /segment`, `GET /jobs/...`, `WS /live`). All
its URLs are relative to the page, so it works behind a path prefix (`avs serve --root-path /avs`).
Torch-free, like the rest of the API process.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")

# The page loads only its own modules and styles, and talks only to its own origin (HTTP and WebSocket);
# media come from the user's file (blob:) or camera (mediastream, no URL).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "media-src 'self' blob:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'self'; "
                           "frame-ancestors 'none'")

router = APIRouter(tags=["web page"])


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The single page (upload and live tabs). Not behind the API key: it holds no data, and asks for the key."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def install_web_page(app: FastAPI) -> None:
    """`/` and `/static/*` (the page's modules, styles and icon)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
