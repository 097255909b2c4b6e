"""/healthz (the process answers) and /readyz (the database, the broker, the worker)."""

import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from fastapi import APIRouter, Response
from sqlalchemy import text

from app.core.db import get_engine
from app.core.deps import SettingsDep
from app.core.errors import error_body
from app.core.routing import Route
from app.jobs.queue import get_celery
from app.ops.supervisor import fresh_workers

router = APIRouter(tags=["health"], route_class=Route)

# Set by `finetune serve` when it runs an embedded worker: then readiness needs that worker.
SUPERVISOR = None


@router.get("/healthz")
async def healthz() -> dict:
    # On the event loop, not the threadpool: it answers even while every pool thread
    # waits on a database that is paused.
    return {"status": "ok"}


# One pool per dependency: checks stuck on a paused database must not queue the broker's.
_DB_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz-db")
_BROKER_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz-broker")


def _check_database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def _check_broker() -> None:
    with get_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _outcome(future, timeout: float) -> str:
    try:
        future.result(timeout=timeout)
        return "ok"
    except FutureTimeout:
        return f"error: no answer within {timeout:g}s"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


@router.get("/readyz")
def readyz(settings: SettingsDep, response: Response) -> dict:
    """Ready when the database answers, the broker accepts a connection and, under
    `finetune serve` with its embedded worker, that worker heart-beats."""
    checks: dict[str, str] = {}
    # Each check in a thread of its own, waited for at most ready_timeout_seconds: a
    # paused database or broker answers nothing, and readiness must still answer.
    start = time.monotonic()
    database = _DB_CHECKS.submit(_check_database)
    broker = _BROKER_CHECKS.submit(_check_broker)
    checks["database"] = _outcome(database, settings.ready_timeout_seconds)
    checks["broker"] = _outcome(broker, settings.ready_timeout_seconds)
    checks["broker_ms"] = f"{(time.monotonic() - start) * 1000:.1f}"
    # A worker is alive while it touches its heartbeat file (every heartbeat_seconds).
    max_age = max(3 * settings.heartbeat_seconds, 10)
    checks["workers"] = str(fresh_workers(settings.workers_dir, max_age))
    problems = [name for name in ("database", "broker") if checks[name] != "ok"]
    if SUPERVISOR is not None:
        # Embedded: this process owns the only worker; no heartbeat means no job can run.
        pid = SUPERVISOR.pid()
        beating = pid is not None and fresh_workers(settings.workers_dir, max_age, pid=pid)
        checks["worker"] = "ok" if beating else "error: no heartbeat from the embedded worker"
        if checks["worker"] != "ok":
            problems.append("worker")
    if problems:
        response.status_code = 503
        message = f"not ready: {', '.join(problems)} unavailable"
        return {**error_body("not_ready", message), "checks": checks}
    return {"status": "ready", "checks": checks}
