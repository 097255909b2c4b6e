"""The dashboard at `/` and its static files under `/ui/`. The page is a client of the
public REST API (the same routes, with the key in an Authorization header); nothing here
reads the database or adds an endpoint of its own."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# The page loads only its own files and talks only to this origin: no CDN, no inline
# script. Chart.js sets canvas sizes through style attributes, hence inline styles.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


def install(app: FastAPI) -> None:
    """`/` and `/ui/*` (revalidated on each load: ETag / Last-Modified)."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")
