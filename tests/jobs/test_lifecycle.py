"""The job row's lifecycle on SQLite, in milliseconds: claim, heartbeat, release, the
max-attempts rule and stale-job detection. The live-process tests in tests/reliability
show the same rules with real workers; these pin each rule down on its own."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.auth.models import Owner
from app.core.db import get_sessionmaker, new_id, utcnow
from app.jobs import lifecycle, service
from app.jobs.models import Job, JobEvent

LEASE = 60


@pytest.fixture
def session(data_dir):
    with get_sessionmaker()() as s:
        s.add(Owner(id=new_id("own"), name="someone"))
        s.commit()
        yield s


def _job(session, **values) -> str:
    owner = session.scalars(select(Owner)).first()
    job = Job(
        id=new_id("job"),
        owner_id=owner.id,
        dataset_id="ds_x",
        spec={"epochs": 4},
        **values,
    )
    session.add(job)
    session.commit()
    return job.id


def _claim(session, job_id, worker="w1", max_attempts=3):
    return lifecycle.claim(
        session=session,
        job_id=job_id,
        worker=worker,
        lease_seconds=LEASE,
        max_attempts=max_attempts,
    )


def _row(session, job_id) -> Job:
    session.expire_all()
    return session.get(Job, job_id)


def _expire_lease(session, job_id) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(1))
    )
    session.commit()


def _events(session, job_id) -> list[tuple[str, dict]]:
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    return [(e.type, e.data) for e in rows]


def test_claim_takes_a_queued_job_once(session):
    job_id = _job(session)
    first = _claim(session, job_id, "w1")
    assert first is not None and first.attempt == 1 and not first.resumed
    # A duplicate message on another worker finds the row taken.
    assert _claim(session, job_id, "w2") is None
    job = _row(session, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w1", 1)
    assert job.lease_expires_at is not None and job.started_at is not None
    assert _events(session, job_id)[-1][1]["status"] == "running"


def test_claim_of_unknown_or_finished_job_is_none(session):
    assert _claim(session, "job_missing") is None
    job_id = _job(session, status="succeeded")
    assert _claim(session, job_id) is None
    assert _row(session, job_id).attempts == 0


def test_claim_of_cancel_requested_job_cancels_it(session):
    job_id = _job(session, cancel_requested=True)
    assert _claim(session, job_id) is None
    job = _row(session, job_id)
    assert job.status == "cancelled" and job.finished_at is not None and job.attempts == 0


def test_expired_lease_is_claimed_again_as_a_resume(session):
    job_id = _job(session)
    _claim(session, job_id, "w1")
    assert _claim(session, job_id, "w2") is None  # lease still valid
    _expire_lease(session, job_id)
    again = _claim(session, job_id, "w2")
    assert again is not None and again.resumed and again.attempt == 2
    assert _row(session, job_id).lease_owner == "w2"


def test_heartbeat_renews_only_the_owners_lease(session):
    job_id = _job(session)
    _claim(session, job_id, "w1")
    before = _row(session, job_id).lease_expires_at
    assert lifecycle.heartbeat(
        session=session, job_id=job_id, worker="w2", lease_seconds=LEASE
    ) == (False, False)
    ours, cancel = lifecycle.heartbeat(
        session=session, job_id=job_id, worker="w1", lease_seconds=LEASE * 2
    )
    assert ours and not cancel
    assert _row(session, job_id).lease_expires_at > before
    session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    session.commit()
    assert lifecycle.heartbeat(
        session=session, job_id=job_id, worker="w1", lease_seconds=LEASE
    ) == (True, True)


def test_release_hands_back_without_costing_an_attempt(session):
    job_id = _job(session)
    for _ in range(3):  # three hand-backs in a row, then a fourth claim still runs
        assert _claim(session, job_id, "w1", max_attempts=1) is not None
        lifecycle.release(session=session, job_id=job_id, worker="w1")
        job = _row(session, job_id)
        assert job.enqueued_at is None and job.lease_expires_at <= utcnow()
    assert _claim(session, job_id, "w1", max_attempts=1) is not None
    assert [t for t, _ in _events(session, job_id)].count("released") == 3


def test_release_by_another_worker_changes_nothing(session):
    job_id = _job(session)
    _claim(session, job_id, "w1")
    lifecycle.release(session=session, job_id=job_id, worker="w2")
    assert _row(session, job_id).lease_owner == "w1"
    assert "released" not in [t for t, _ in _events(session, job_id)]


def test_lost_workers_past_max_attempts_fail_the_job(session):
    job_id = _job(session)
    for attempt in (1, 2):
        assert _claim(session, job_id, f"w{attempt}", max_attempts=2).attempt == attempt
        _expire_lease(session, job_id)  # the worker died: its lease runs out
    assert _claim(session, job_id, "w3", max_attempts=2) is None
    job = _row(session, job_id)
    assert job.status == "failed" and job.error["code"] == "too_many_attempts"
    assert job.lease_owner is None


def test_finish_is_guarded_by_the_lease(session):
    job_id = _job(session)
    _claim(session, job_id, "w1")
    assert not lifecycle.finish(session=session, job_id=job_id, worker="w2", status="succeeded")
    assert lifecycle.finish(
        session=session,
        job_id=job_id,
        worker="w1",
        status="failed",
        error={"code": "x", "message": "y"},
    )
    job = _row(session, job_id)
    assert job.status == "failed" and job.lease_owner is None and job.finished_at is not None
    # A second finish (a duplicate message that also ran) cannot overwrite the outcome.
    assert not lifecycle.finish(session=session, job_id=job_id, worker="w1", status="succeeded")


def test_record_epoch_keeps_one_row_per_epoch(session):
    job_id = _job(session)
    _claim(session, job_id, "w1")
    for epoch in (1, 2, 2):  # a resumed attempt may re-report epoch 2
        assert lifecycle.record_epoch(
            session=session,
            job_id=job_id,
            worker="w1",
            report={"epoch": epoch, "epochs": 4, "train_loss": 1.0 / epoch},
        )
    job = _row(session, job_id)
    assert [h["epoch"] for h in job.history] == [1, 2]
    assert job.progress["fraction"] == 0.5
    assert not lifecycle.record_epoch(
        session=session, job_id=job_id, worker="w2", report={"epoch": 3}
    )


def _stale(session, **kw) -> set[str]:
    return set(service.stale_jobs(session=session, grace_seconds=5, **kw))


def test_stale_jobs_finds_lost_messages_and_dead_workers(session):
    now = utcnow()
    old = now - timedelta(seconds=60)
    never_sent = _job(session, created_at=old)
    fresh = _job(session, created_at=now)  # within the grace period: the send may be under way
    sent_recently = _job(session, created_at=old, enqueued_at=now - timedelta(seconds=30))
    sent_long_ago = _job(session, created_at=old, enqueued_at=now - timedelta(hours=1))
    dead_worker = _job(
        session,
        status="running",
        created_at=old,
        enqueued_at=old,
        lease_expires_at=now - timedelta(seconds=10),
    )
    live_worker = _job(
        session,
        status="running",
        created_at=old,
        enqueued_at=old,
        lease_expires_at=now + timedelta(seconds=30),
    )
    resent_after_expiry = _job(
        session,
        status="running",
        created_at=old,
        enqueued_at=now - timedelta(seconds=5),
        lease_expires_at=now - timedelta(seconds=10),
    )
    done = _job(session, status="succeeded", created_at=old)

    stale = _stale(session)
    assert {never_sent, sent_long_ago, dead_worker} <= stale
    assert not stale & {fresh, sent_recently, live_worker, resent_after_expiry, done}
    # An empty broker queue means a sent message is gone: re-send after the grace period.
    stale = _stale(session, queue_empty=True)
    assert {sent_recently, resent_after_expiry} <= stale
    assert not stale & {fresh, live_worker, done}
