"""`finetune serve` with its embedded worker, as an operator runs it: SIGTERM (docker stop,
systemd, Kubernetes) hands the job back and leaves no orphan; the worker dies with a
SIGKILLed serve; a killed worker is noticed by /readyz and restarted; a broken message
in the filesystem broker's queue is moved aside instead of killing the worker."""

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_KEY
from tests.helpers import free_port, start, stop, wait_http
from tests.reliability.conftest import FAST_LEASES, events, finished, poll, upload_digits
from tests.reliability.test_crash import SLOW_SPEC


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def _wait_gone(pid: int, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


class Serve:
    """One `finetune serve` (API + embedded worker) on a data dir, restartable."""

    def __init__(self, root: Path, **extra_env: str):
        self.root = root
        self.data_dir = root / "var"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")} | {
            "FINETUNE_DATA_DIR": str(self.data_dir),
            "FINETUNE_API_KEY": TEST_KEY,
            "FINETUNE_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            **FAST_LEASES,
            **extra_env,
        }
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = root / "serve.log"
        self.proc = None
        self.strays: list[int] = []  # worker pids to clean up whatever happens

    def start(self):
        self.proc = start(["serve", "--port", str(self.port)], self.env, self.log)
        wait_http(f"{self.base}/healthz", 90, self.proc)
        return self

    def wait_ready(self, deadline_s: float = 90) -> dict:
        end = time.monotonic() + deadline_s
        body = None
        while time.monotonic() < end:
            r = httpx.get(f"{self.base}/readyz", timeout=10)
            body = r.json()
            if r.status_code == 200:
                return body
            time.sleep(0.2)
        raise TimeoutError(f"never ready: {body}\n{self.log.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        """Pids of the workers heart-beating in this data dir (ids are host:pid:nonce)."""
        pids = [int(p.name.split(":")[1]) for p in (self.data_dir / "workers").glob("*:*:*")]
        self.strays += [p for p in pids if p not in self.strays]
        return [p for p in pids if _alive(p)]

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, timeout=60, headers={"Authorization": f"Bearer {TEST_KEY}"}
        )

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        for pid in self.strays:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        print(f"----- serve.log (tail) -----\n{self.log.read_text()[-4000:]}")


@pytest.fixture
def serve(tmp_path):
    s = Serve(tmp_path)
    try:
        yield s.start()
    finally:
        s.close()


def _running_worker_pid(client, job_id: str) -> int:
    running = [e for e in events(client, job_id) if e["data"].get("status") == "running"]
    return int(running[-1]["data"]["worker"].split(":")[1])


@pytest.mark.slow
def test_sigterm_to_serve_hands_the_job_back_and_stops_the_worker(serve, tmp_path):
    with serve.client() as client:
        ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
        epochs = 20
        job_id = client.post(
            "/v1/jobs", json={**SLOW_SPEC, "dataset_id": ds["id"], "epochs": epochs}
        ).json()["id"]
        poll(client, job_id, lambda j: j["progress"]["epoch"] >= 1, 90, every=0.05)
        worker = _running_worker_pid(client, job_id)
        serve.strays.append(worker)

    os.kill(serve.proc.pid, signal.SIGTERM)  # the parent only, as `docker stop` does
    serve.proc.wait(timeout=60)
    assert _wait_gone(worker, 5), "serve exited and left its worker running (an orphan)"

    serve.start()
    with serve.client() as client:
        job = poll(client, job_id, finished, 120)
        assert job["status"] == "succeeded", job
        evs = events(client, job_id)
        assert [e["data"]["worker"] for e in evs if e["type"] == "released"] != [], evs
        epochs_seen = [e["data"]["epoch"] for e in evs if e["type"] == "epoch"]
        assert epochs_seen.count(1) == 1 and epochs_seen[-1] == epochs  # resumed, not redone
        assert job["attempts"] == 2  # the hand-back, then the resumed run: no lost worker


@pytest.mark.slow
def test_sigkilled_serve_takes_its_worker_with_it(serve):
    serve.wait_ready()
    (worker,) = _children(serve.proc.pid)
    serve.strays.append(worker)
    os.kill(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait(timeout=10)
    assert _wait_gone(worker, 30), "the worker outlived its SIGKILLed serve"


@pytest.mark.slow
def test_killed_worker_is_reported_by_readyz_and_restarted(serve, tmp_path):
    ready = serve.wait_ready()
    assert ready["checks"]["worker"] == "ok", ready
    (worker,) = serve.worker_pids()
    os.kill(worker, signal.SIGKILL)
    # Until the supervisor's restart (a backoff, then the new worker's start-up) beats,
    # readiness says the worker is missing; poll so a slow test process still sees it.
    seen = []
    end = time.monotonic() + 5
    while time.monotonic() < end and not any(r.status_code == 503 for r in seen):
        seen.append(httpx.get(f"{serve.base}/readyz", timeout=10))
        time.sleep(0.05)
    refused = [r for r in seen if r.status_code == 503]
    assert refused, [r.text for r in seen]
    assert refused[0].json()["checks"]["worker"].startswith("error"), refused[0].text
    assert _wait_gone(worker, 5)

    serve.wait_ready(90)  # restarted after a backoff
    (again,) = serve.worker_pids()
    assert again != worker
    assert "restarting it" in serve.log.read_text()
    with serve.client() as client:
        ds = upload_digits(client, tmp_path / "d.zip", per_class=6, classes=2)
        spec = {**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 1, "image_size": 32}
        job = poll(client, client.post("/v1/jobs", json=spec).json()["id"], finished, 60)
        assert job["status"] == "succeeded", job


@pytest.mark.slow
def test_malformed_broker_messages_are_moved_aside_not_fatal(serve, tmp_path):
    serve.wait_ready()
    queue = serve.data_dir / "broker" / "queue"
    bad_names = []
    for i, content in enumerate([b"", b"{not json", b"[1, 2]"]):
        name = f"{i:013d}_bad{i}.finetune.msg"  # sorts before any real message
        (queue / name).write_bytes(content)
        bad_names.append(name)
    with serve.client() as client:
        ds = upload_digits(client, tmp_path / "d.zip", per_class=6, classes=2)
        spec = {**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 1, "image_size": 32}
        job = poll(client, client.post("/v1/jobs", json=spec).json()["id"], finished, 60)
        assert job["status"] == "succeeded", job
    aside = sorted(p.name for p in (serve.data_dir / "broker" / "bad").iterdir())
    assert aside == bad_names
    assert "restarting it" not in serve.log.read_text()  # the worker never died
    assert not list(queue.glob("*.msg"))


def _read_stream(base: str, job_id: str, lines: list, last_id: int | None = None):
    headers = {"Authorization": f"Bearer {TEST_KEY}", "Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if last_id is not None and line.startswith("id: "):
                return  # the first event after the reconnect is enough


@pytest.mark.slow
def test_sigterm_ends_open_event_streams_which_resume_with_last_event_id(serve, tmp_path):
    with serve.client() as client:
        ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
        spec = {**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 300}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        poll(client, job_id, lambda j: j["progress"]["epoch"] >= 1, 90, every=0.05)
    lines: list[str] = []
    reader = threading.Thread(target=_read_stream, args=(serve.base, job_id, lines), daemon=True)
    reader.start()
    end = time.monotonic() + 30
    while not any(line.startswith("id: ") for line in lines):
        assert time.monotonic() < end, lines
        time.sleep(0.05)

    t0 = time.monotonic()
    os.kill(serve.proc.pid, signal.SIGTERM)
    reader.join(timeout=10)
    assert not reader.is_alive(), "the open event stream held the shutdown"
    assert "event: shutdown" in lines, lines[-5:]
    serve.proc.wait(timeout=60)
    print(f"\n[sigterm + stream] serve exited {time.monotonic() - t0:.1f}s after SIGTERM")

    last_id = max(int(line[4:]) for line in lines if line.startswith("id: "))
    serve.start()
    more: list[str] = []
    _read_stream(serve.base, job_id, more, last_id=last_id)
    ids = [int(line[4:]) for line in more if line.startswith("id: ")]
    assert ids and ids[0] > last_id, (last_id, more)
    with serve.client() as client:
        client.post(f"/v1/jobs/{job_id}/cancel")
        assert poll(client, job_id, finished, 60)["status"] == "cancelled"
