"""/metrics: request counts and latency by route (the Metrics middleware), and jobs by
status read from the database at scrape time."""

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.core.db import get_sessionmaker
from app.core.deps import SettingsDep
from app.core.errors import Unauthorized
from app.core.routing import Route
from app.jobs.models import Job

router = APIRouter(tags=["health"], route_class=Route)

REQUESTS = Counter("finetune_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "finetune_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class Metrics:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], path, str(status["code"])).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - start)


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
def metrics(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """Prometheus metrics, aggregated across every owner (request counts by route, jobs by
    status). Open unless FINETUNE_METRICS_TOKEN is set; then it needs that bearer token."""
    token = settings.metrics_token
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("/metrics needs 'Authorization: Bearer <FINETUNE_METRICS_TOKEN>'")
    body = generate_latest() + generate_latest(_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
