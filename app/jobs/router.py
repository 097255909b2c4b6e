import asyncio
import json
import logging
import threading
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from app.auth.deps import CurrentOwner
from app.core.db import get_sessionmaker
from app.core.deps import MAX_OFFSET, Offset, PageParams, SessionDep
from app.core.routing import Route
from app.core.schemas import Page
from app.jobs import service
from app.jobs.queue import enqueue_job
from app.jobs.schemas import JobEventOut, JobOut, JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=Route)
log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def create_job(
    spec: JobSpec,
    owner: CurrentOwner,
    session: SessionDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
):
    job, created = service.create(
        session=session, owner=owner, spec=spec, idempotency_key=idempotency_key
    )
    if created:
        # Queue only after commit, and only the id. If the broker is down the job stays
        # queued with no message; the reconciler sends it later.
        try:
            enqueue_job(job.id)
            service.mark_enqueued(session=session, job_id=job.id)
        except Exception:
            log.warning("could not enqueue job %s now; the reconciler will", job.id, exc_info=True)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return job


@router.get("", response_model=Page[JobOut])
def list_jobs(
    owner: CurrentOwner,
    session: SessionDep,
    page: PageParams,
    status: Annotated[JobStatus | None, Query()] = None,
):
    rows, total = service.list_(
        session=session, owner=owner, status=status, limit=page.limit, offset=page.offset
    )
    return page.body(rows, total)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, owner: CurrentOwner, session: SessionDep):
    return service.get(session=session, owner=owner, job_id=job_id)


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, owner: CurrentOwner, session: SessionDep):
    return service.cancel(session=session, owner=owner, job_id=job_id)


@router.get(
    "/{job_id}/events",
    response_model=list[JobEventOut],
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_events(
    job_id: str,
    owner: CurrentOwner,
    session: SessionDep,
    request: Request,
    after: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_OFFSET)] = None,
):
    # A reconnecting EventSource (say, after an API restart) sends the last id it saw.
    after = max(after, last_event_id or 0)
    rows = service.events(session=session, owner=owner, job_id=job_id, after=after, limit=limit)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return rows
    session.close()  # the stream opens a short session per poll; hold no lock meanwhile
    return StreamingResponse(
        _event_stream(owner_id=owner.id, job_id=job_id, after=after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


# Set when the server starts shutting down (`finetune serve` wires uvicorn's signal
# handling to it): open streams end with a `shutdown` event instead of holding graceful
# shutdown for as long as their job runs, and the client reconnects with Last-Event-ID.
STREAMS_CLOSING = threading.Event()
POLL_SECONDS = 0.5


def _poll_events(owner_id: str, job_id: str, after: int) -> tuple[list[dict], bool]:
    """One poll in a worker thread (blocking database calls stay off the event loop)."""
    from app.auth.models import Owner
    from app.jobs.models import Job

    with get_sessionmaker()() as session:
        owner = session.get(Owner, owner_id)
        rows = service.events(session=session, owner=owner, job_id=job_id, after=after, limit=500)
        finished = session.get(Job, job_id).status in service.TERMINAL
        payloads = [JobEventOut.model_validate(ev).model_dump(mode="json") for ev in rows]
    return payloads, finished


async def _event_stream(*, owner_id: str, job_id: str, after: int):
    """Server-sent events: everything after `after`, then new events until the job ends."""
    last = after
    while True:
        if STREAMS_CLOSING.is_set():
            note = {"reason": "the server is shutting down; reconnect with Last-Event-ID"}
            yield f"retry: 1000\nevent: shutdown\ndata: {json.dumps(note)}\n\n"
            return
        try:
            rows, finished = await anyio.to_thread.run_sync(_poll_events, owner_id, job_id, last)
        except Exception as exc:  # the database is away: end, and let the client retry
            log.warning("event stream for %s ended: %s", job_id, type(exc).__name__)
            note = {"reason": "the database is unavailable; reconnect with Last-Event-ID"}
            yield f"retry: 5000\nevent: unavailable\ndata: {json.dumps(note)}\n\n"
            return
        for payload in rows:
            last = payload["id"]
            yield f"id: {last}\nevent: {payload['type']}\ndata: {json.dumps(payload)}\n\n"
        if finished and not rows:
            return
        await asyncio.sleep(POLL_SECONDS)
