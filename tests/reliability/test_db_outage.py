"""The database goes away under a live API, on a private PostgreSQL server this module
starts (so pausing or stopping it disturbs nobody else): paused (SIGSTOP), /readyz still
answers within seconds and /healthz at once; stopped, requests get a 503
`database_unavailable` that says so (not a 500 and a traceback); back, all is well."""

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.helpers import free_port
from tests.reliability.conftest import Live, upload_digits

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


class PrivatePostgres:
    def __init__(self, root):
        self.root, self.data = root, root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        try:
            self.user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no 'postgres' user to run a private PostgreSQL server as")
        os.chown(root, self.user.pw_uid, self.user.pw_gid)
        self._as_postgres(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres"])

    def _as_postgres(self, argv, **kwargs):
        cmd = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}"]
        cmd += ["--init-groups", *argv]
        if kwargs.pop("background", False):
            return subprocess.Popen(cmd, start_new_session=True, **kwargs)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot run a private PostgreSQL ({argv[0]}): {r.stderr.strip()[-300:]}")
        return r

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        log = (self.root / "postgres.log").open("ab")
        self.proc = self._as_postgres(
            ["postgres", "-D", str(self.data), "-p", str(self.port), "-k", str(self.root)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            background=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise TimeoutError("the private PostgreSQL did not start")

    def signal(self, sig: int) -> None:
        """To the postmaster, then to every backend (each is its own process group)."""
        os.kill(self.proc.pid, sig)
        for pid in _children(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGINT)  # fast shutdown
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def pg_live(tmp_path_factory):
    # Not under pytest's temp root: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="finetune-pg-"))
    pg = PrivatePostgres(root)
    pg.start()
    live = Live(
        tmp_path_factory.mktemp("dboutage"),
        "embedded",
        {"FINETUNE_DATABASE_URL": pg.url.replace("postgresql://", "postgresql+psycopg://")},
    )
    try:
        live.start_api()
        yield pg, live
    finally:
        live.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        print(live.logs())


def test_paused_database_readiness_answers_in_seconds(pg_live):
    pg, live = pg_live
    with live.client() as client:
        assert client.get("/v1/jobs").status_code == 200
        pg.signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = httpx.get(f"{live.base}/readyz", timeout=20)
            ready_s = time.monotonic() - t0
            assert r.status_code == 503, r.text
            assert r.json()["checks"]["database"].startswith("error"), r.text
            assert ready_s < 8, ready_s
            t0 = time.monotonic()
            assert httpx.get(f"{live.base}/healthz", timeout=5).status_code == 200
            assert time.monotonic() - t0 < 1
        finally:
            pg.signal(signal.SIGCONT)
        end = time.monotonic() + 30
        while httpx.get(f"{live.base}/readyz", timeout=20).status_code != 200:
            assert time.monotonic() < end, "never ready again after the database resumed"
            time.sleep(0.5)
        assert client.get("/v1/jobs").status_code == 200
    print(f"\n[db paused] /readyz answered 503 in {ready_s:.1f}s")


def test_stopped_database_is_a_503_not_a_500(pg_live):
    pg, live = pg_live
    with live.client() as client:
        assert client.get("/v1/datasets").status_code == 200
        tracebacks = live.logs_full().count("Traceback")
        pg.stop()
        try:
            for method, path in (
                ("GET", "/v1/datasets"),
                ("GET", "/v1/jobs/job_0123456789abcdef0123"),
                ("POST", "/v1/admin/keys"),
            ):
                r = client.request(method, path, json={"name": "x"} if method == "POST" else None)
                assert r.status_code == 503, (path, r.text)
                error = r.json()["error"]
                assert error["code"] == "database_unavailable", r.text
                assert "database" in error["message"]
            # A key the API has never seen must be looked up: that is a 503 too, not a 401.
            r = httpx.get(
                f"{live.base}/v1/datasets",
                headers={"Authorization": "Bearer ft_unknown_0123456789abcdefghij"},
                timeout=30,
            )
            assert r.status_code == 503, r.text
            assert live.logs_full().count("Traceback") == tracebacks, live.logs()
        finally:
            pg.start()
        assert client.get("/v1/datasets").status_code == 200


def test_open_event_streams_do_not_block_the_loop_while_the_database_is_paused(pg_live, tmp_path):
    pg, live = pg_live
    with live.client() as client:
        ds = upload_digits(client, tmp_path / "d.zip", per_class=3, classes=2, size=8)
        spec = {"dataset_id": ds["id"], "base_model": "tiny_cnn", "epochs": 1, "image_size": 32}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]  # no worker: stays queued
        headers = httpx.Headers(client.headers)
        headers["Accept"] = "text/event-stream"
        opened = []

        def stream():
            url = f"{live.base}/v1/jobs/{job_id}/events"
            with httpx.stream("GET", url, headers=headers, timeout=120) as r:
                opened.append(r.headers["content-type"])
                for _ in r.iter_lines():
                    pass

        readers = [threading.Thread(target=stream, daemon=True) for _ in range(3)]
        for t in readers:
            t.start()
        time.sleep(1.5)  # every stream has polled at least once
        assert len(opened) == 3 and all(c.startswith("text/event-stream") for c in opened)
        pg.signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)  # every stream is now stuck in a poll
            worst = 0.0
            for _ in range(5):
                t0 = time.monotonic()
                assert httpx.get(f"{live.base}/healthz", timeout=10).status_code == 200
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.2)
        finally:
            pg.signal(signal.SIGCONT)
        assert worst < 0.5, worst
        client.post(f"/v1/jobs/{job_id}/cancel")  # the streams end with the job
        for t in readers:
            t.join(timeout=30)
    print(f"\n[db paused, 3 streams] worst /healthz {worst * 1000:.0f} ms")
