"""A live installation the reliability tests can hurt: real `finetune serve` and
`finetune worker` processes on loopback, which a test may SIGKILL and start again.

Each Live gets its own data dir, and (distributed) its own PostgreSQL database and Redis
database index, so a module's leftovers never reach another module's workers.
"""

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.conftest import TEST_KEY
from tests.helpers import digits_zip, free_port, start, stop, wait_http

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# Short leases so a dead worker's job is re-queued within seconds, not a minute.
FAST_LEASES = {
    "FINETUNE_LEASE_SECONDS": "4",
    "FINETUNE_HEARTBEAT_SECONDS": "1",
    "FINETUNE_RECONCILE_SECONDS": "1",
}
TERMINAL = ("succeeded", "failed", "cancelled")


def start_redis(port: int) -> subprocess.Popen:
    """A private redis-server on loopback, no persistence (a broker restarted empty).

    Private, not a database index on the shared server: another checkout running these
    tests at the same time would otherwise share the queue, and its workers would take
    (and drop, finding no such job in their database) our messages.
    """
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        + ["--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.1)
    raise TimeoutError("redis-server did not start")


def _new_pg_database() -> str:
    name = f"finetune_rel_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Live:
    """One installation: an API process, any number of worker processes, one data dir."""

    def __init__(self, root: Path, mode: str, extra_env: dict | None = None):
        self.root, self.mode = root, mode
        self.data_dir = root / "var"
        (root / "tmp").mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")} | {
            "FINETUNE_DATA_DIR": str(self.data_dir),
            "FINETUNE_API_KEY": TEST_KEY,
            "FINETUNE_TORCH_THREADS": "1",
            # One BLAS thread per process: two workers and the API share 2 cores.
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            # Its own temp dir, so a test can see what a request left behind there.
            "TMPDIR": str(root / "tmp"),
            **(extra_env or {}),
        }
        self.pg_name = None
        self.redis: subprocess.Popen | None = None
        if mode == "redis+postgres":
            self.pg_name = _new_pg_database()
            self.env["FINETUNE_DATABASE_URL"] = (
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}"
            )
            self.redis_port = free_port()
            self.redis = start_redis(self.redis_port)
            self.env["FINETUNE_BROKER_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.api_log = root / "api.log"
        self._worker_logs: list[Path] = []
        self._logs_by_pid: dict[int, Path] = {}

    # ---- processes
    def start_api(self) -> subprocess.Popen:
        # --no-worker: the tests start (and kill) every worker themselves, in both modes.
        self.api = start(["serve", "--port", str(self.port), "--no-worker"], self.env, self.api_log)
        wait_http(f"{self.base}/healthz", 90, self.api)
        return self.api

    def start_worker(self) -> subprocess.Popen:
        log = self.root / f"worker{len(self._worker_logs)}.log"
        self._worker_logs.append(log)
        proc = start(["worker"], self.env, log)
        self._logs_by_pid[proc.pid] = log
        self.workers.append(proc)
        return proc

    def wait_worker_ready(self, proc: subprocess.Popen, deadline_s: float = 60) -> None:
        """Until Celery says the worker is consuming (its log line 'ready.')."""
        log = self._logs_by_pid[proc.pid]
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()}")
            if log.exists() and "ready." in log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {deadline_s}s:\n{log.read_text()[-3000:]}")

    def ensure_workers(self, n: int) -> list[subprocess.Popen]:
        """Start workers until `n` are alive, and wait until each consumes."""
        self.workers = [p for p in self.workers if p.poll() is None]
        fresh = [self.start_worker() for _ in range(n - len(self.workers))]
        for proc in fresh:
            self.wait_worker_ready(proc)
        return self.workers

    def worker_by_pid(self, pid: int) -> subprocess.Popen:
        return next(p for p in self.workers if p.pid == pid)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """SIGKILL the whole process group: no shutdown handler, no ack, no release."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            stop(proc)
        if self.pg_name:
            _drop_pg_database(self.pg_name)
        if self.redis is not None:
            self.kill(self.redis)

    def logs(self) -> str:
        out = []
        for path in [self.api_log, *self._worker_logs]:
            if path.exists():
                out.append(f"----- {path.name} (tail) -----\n{path.read_text()[-4000:]}")
        return "\n".join(out)

    def logs_full(self) -> str:
        """Everything every process of this installation has written so far."""
        return "\n".join(
            p.read_text(errors="replace") for p in [self.api_log, *self._worker_logs] if p.exists()
        )

    # ---- HTTP
    def client(self, key: str = TEST_KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, timeout=60, headers={"Authorization": f"Bearer {key}"}
        )

    def new_owner(self, name: str | None = None) -> httpx.Client:
        """A client for a fresh owner: its lists hold only what the test made."""
        with self.client() as admin:
            r = admin.post("/v1/admin/keys", json={"name": name or uuid.uuid4().hex[:8]})
        assert r.status_code == 201, r.text
        return self.client(r.json()["key"])


def upload_digits(client: httpx.Client, path: Path, per_class: int, classes: int, size=32) -> dict:
    archive = digits_zip(path, per_class=per_class, size=size, classes=classes)
    with archive.open("rb") as f:
        r = client.post("/v1/datasets", files={"file": (path.name, f, "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()


def poll(client: httpx.Client, job_id: str, until, deadline_s: float, every: float = 0.2) -> dict:
    """GET the job until `until(job)` is true; fails with the last body at the deadline."""
    end = time.monotonic() + deadline_s
    job = None
    while time.monotonic() < end:
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        if until(job):
            return job
        time.sleep(every)
    raise TimeoutError(f"job {job_id} never got there in {deadline_s}s: {job}")


def finished(job: dict) -> bool:
    return job["status"] in TERMINAL


def train_tiny_model(client: httpx.Client, dataset_id: str) -> dict:
    """One epoch of tiny_cnn at 32 px on `dataset_id`, waited for; the succeeded job."""
    spec = {
        "dataset_id": dataset_id,
        "base_model": "tiny_cnn",
        "strategy": "full",
        "epochs": 1,
        "image_size": 32,
    }
    job = poll(client, client.post("/v1/jobs", json=spec).json()["id"], finished, 60)
    assert job["status"] == "succeeded", job
    return job


def events(client: httpx.Client, job_id: str) -> list[dict]:
    r = client.get(f"/v1/jobs/{job_id}/events")
    assert r.status_code == 200, r.text
    return r.json()


def _live(tmp_path_factory, mode: str, extra_env: dict, workers: int):
    live = Live(tmp_path_factory.mktemp(mode.replace("+", "_")), mode, extra_env)
    try:
        live.start_api()
        live.ensure_workers(workers)
        yield live
    finally:
        live.close()
        print(live.logs())


@pytest.fixture(scope="session")
def dist(tmp_path_factory):
    """Redis + PostgreSQL, two workers, short leases, two attempts per job at most.

    Shared by the modules that need live workers; every test works as a fresh owner, so
    its lists hold only its own datasets, jobs and models.
    """
    yield from _live(
        tmp_path_factory, "redis+postgres", {**FAST_LEASES, "FINETUNE_MAX_ATTEMPTS": "2"}, 2
    )


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """The defaults (SQLite + filesystem broker), one worker, a 32 MiB upload limit."""
    yield from _live(
        tmp_path_factory,
        "embedded",
        {**FAST_LEASES, "FINETUNE_MAX_UPLOAD_BYTES": str(32 * 1024 * 1024)},
        1,
    )
