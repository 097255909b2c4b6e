import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.core.db import get_engine
from app.core.deps import SettingsDep
from app.core.errors import error_body
from worker.celery_app import get_celery

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(settings: SettingsDep, response: Response) -> dict:
    """Ready when the database answers and the broker accepts a connection."""
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    start = time.monotonic()
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    checks["broker_ms"] = f"{(time.monotonic() - start) * 1000:.1f}"
    ok = checks["database"] == "ok" and checks["broker"] == "ok"
    if not ok:
        response.status_code = 503
        return {**error_body("not_ready", "database or broker unreachable"), "checks": checks}
    return {"status": "ready", "checks": checks}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
