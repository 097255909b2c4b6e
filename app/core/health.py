import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from app.core.db import get_engine, get_sessionmaker
from app.core.deps import SettingsDep
from app.core.errors import error_body
from app.core.routing import Route
from app.jobs.models import Job
from worker.celery_app import get_celery

router = APIRouter(tags=["health"], route_class=Route)


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


class _JobsCollector(Collector):
    """Jobs by status, read from the database at scrape time (true across API replicas)."""

    def describe(self):
        return []  # so registering does not query the database at import

    def collect(self):
        gauge = GaugeMetricFamily("finetune_jobs", "Jobs by status", labels=["status"])
        with get_sessionmaker()() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        counts = {status: n for status, n in rows}
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            gauge.add_metric([status], counts.get(status, 0))
        yield gauge


_registry = CollectorRegistry()
_registry.register(_JobsCollector())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics() -> Response:
    body = generate_latest() + generate_latest(_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
