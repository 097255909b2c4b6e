"""`finetune serve`'s embedded worker: started as a child, restarted with backoff when it
dies, stopped (its job handed back) when serve stops; and the worker heartbeat files that
tell /readyz whether a worker is consuming.

A worker touches `<data_dir>/workers/<worker id>` every FINETUNE_HEARTBEAT_SECONDS while
it consumes (even mid-job: a side thread does it). Touching needs no free blocks, so a full
disk does not make a live worker look dead.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PARENT_ENV = "FINETUNE_SUPERVISOR_PID"


def die_with_parent() -> None:
    """In a supervised worker: SIGTERM (a graceful hand-back) when serve dies, even by
    SIGKILL. Exits at once if serve is already gone."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        sys.exit(0)


def _say(message: str) -> None:
    print(f"finetune serve: {message}", file=sys.stderr, flush=True)


class WorkerSupervisor:
    """Runs `finetune worker` as a child; restarts it when it exits, with a backoff that
    doubles (1 s up to 60 s) while it keeps dying young and resets once it lived a while."""

    MIN_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 1.0, 60.0, 60.0

    def __init__(
        self, env: dict[str, str], workers_dir: Path | None = None, stop_timeout: float = 30.0
    ):
        self.env = {**env, PARENT_ENV: str(os.getpid())}
        self.workers_dir = workers_dir
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # The child is started from this thread, which lives as long as serve does:
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits.
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=self.env)

    def _run(self) -> None:
        backoff = self.MIN_BACKOFF
        while not self._stop.is_set():
            failed = None
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    self.proc = self._spawn()
                except OSError as exc:  # out of memory or processes: try again later
                    failed = exc
            if failed is not None:
                _say(f"could not start the embedded worker ({failed}); retrying in {backoff:.0f}s")
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.MAX_BACKOFF)
                continue
            started = time.monotonic()
            while self.proc.poll() is None and not self._stop.wait(0.5):
                pass
            if self._stop.is_set():
                break
            code = self.proc.returncode
            if self.workers_dir is not None:  # a killed worker could not remove its own
                for stale in self.workers_dir.glob(f"*:{self.proc.pid}:*"):
                    stale.unlink(missing_ok=True)
            if time.monotonic() - started >= self.HEALTHY_AFTER:
                backoff = self.MIN_BACKOFF
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            pid = self.proc.pid
            _say(f"the embedded worker (pid {pid}) {how}; restarting it in {backoff:.0f}s")
            self.restarts += 1
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.MAX_BACKOFF)
        self._terminate()

    def _terminate(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM: the worker stops its job at the next step and hands it back.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            _say(f"the embedded worker (pid {proc.pid}) did not stop in time; killing it")
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
        self._thread.join(timeout=self.stop_timeout + 15)
        self._terminate()  # in case the thread never got to it


# ---- heartbeat files


def heartbeat_path(workers_dir: Path, worker_id: str) -> Path:
    return workers_dir / worker_id.replace("/", "_")


class Heartbeat:
    """A worker's side: touch its file every `every` seconds until stopped."""

    def __init__(self, workers_dir: Path, worker_id: str, every: float):
        self.path = heartbeat_path(workers_dir, worker_id)
        self.every = max(every, 0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError:  # a full disk may refuse a new inode; try again next beat
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)


def fresh_workers(workers_dir: Path, max_age_s: float, pid: int | None = None) -> int:
    """How many workers touched their heartbeat file within `max_age_s` (only process
    `pid`'s, if given: a worker id is host:pid:nonce)."""
    cutoff = time.time() - max_age_s
    count = 0
    try:
        entries = list(os.scandir(workers_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if pid is not None and entry.name.split(":")[1:2] != [str(pid)]:
            continue
        try:
            if entry.stat().st_mtime >= cutoff:
                count += 1
        except FileNotFoundError:
            continue
    return count
