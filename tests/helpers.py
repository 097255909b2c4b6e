"""Test data and process helpers shared by the suites (no mocks: real files, real processes)."""

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
from PIL import Image

from bench.digits import digit_images

REPO = Path(__file__).resolve().parents[1]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def digits_zip(
    path: Path, per_class: int, size: int = 32, classes: int = 10, offset: int = 0
) -> Path:
    """A ZIP in ImageFolder layout: <class>/<n>.png."""
    with zipfile.ZipFile(path, "w") as zf:
        for i, (label, img) in enumerate(digit_images(per_class, size, classes, offset)):
            zf.writestr(f"digit_{label}/{i:05d}.png", png_bytes(img))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start `python -m app.cli <args>` with its output in `log`."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_http(url: str, deadline_s: float = 60, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {deadline_s}s")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def wait_job(
    client: httpx.Client, job_id: str, deadline_s: float, until=("succeeded", "failed", "cancelled")
) -> dict:
    """Poll a job until it reaches one of `until`; returns every distinct body seen."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {job['status']} after {deadline_s}s: {job}")


@contextlib.contextmanager
def embedded_service(tmp_path: Path, key: str, **extra_env: str):
    """A live `finetune serve` on the embedded defaults (SQLite, its own worker) under
    tmp_path; yields an authenticated client. The log's tail is printed at the end."""
    env = {
        **os.environ,
        "FINETUNE_DATA_DIR": str(tmp_path / "var"),
        "FINETUNE_API_KEY": key,
        **extra_env,
    }
    env.pop("FINETUNE_DATABASE_URL", None)
    env.pop("FINETUNE_BROKER_URL", None)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(["serve", "--port", str(port)], env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 90, proc)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=60,
            headers={"Authorization": f"Bearer {key}"},
        ) as client:
            yield client
    finally:
        stop(proc)
        if log.exists():
            print(f"----- serve.log (tail) -----\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (a full disk on demand); skips the test, with
    the reason, where it cannot be mounted (it needs root)."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs at {path} (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
