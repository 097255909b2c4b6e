"""The `finetune` client commands as a subprocess against a live `finetune serve`."""

import json
import os
import pty
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import TEST_KEY
from tests.helpers import REPO, digit_images, free_port


def finetune(*args: str, url: str, key: str | None = TEST_KEY, timeout: float = 300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    cmd = [sys.executable, "-m", "app.cli", *args, "--url", url]
    if key is not None:
        cmd += ["--key", key]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def on_a_tty(*args: str, url: str, timeout: float = 120) -> tuple[int, str]:
    """Run a client command with stdout and stderr on a pseudo-terminal; (rc, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update(COLUMNS="160", TERM="xterm")
    leader, follower = pty.openpty()
    cmd = [sys.executable, "-m", "app.cli", *args, "--url", url, "--key", TEST_KEY]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


@pytest.mark.slow
def test_train_a_folder_follow_json_then_predict(server, digits_folder, tmp_path):
    r = finetune(
        "train", str(digits_folder), "--base-model", "efficientnet_lite0",
        "--strategy", "layerwise", "--epochs", "4", "--image-size", "32",
        "--learning-rate", "0.01", "--name", "cli-digits", "--follow", "--json",
        url=server,
    )  # fmt: skip
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout.strip().splitlines()[-1])
    assert job["status"] == "succeeded" and job["model_id"].startswith("mdl_")
    assert job["spec"]["epochs"] == 4 and job["spec"]["image_size"] == 32
    # Not a TTY: one plain line per epoch (to stderr, since stdout is for the JSON).
    epoch_lines = [line for line in r.stderr.splitlines() if line.startswith("epoch ")]
    epochs_run = len([h for h in job["history"] if h.get("stage") != "probe"])
    assert len(epoch_lines) == epochs_run >= 1
    # LP-FT: the exact probe fits the head first, and says so on its own line.
    assert job["history"][0]["stage"] == "probe"
    assert any(line.startswith("probe  C ") for line in r.stderr.splitlines()), r.stderr
    assert epoch_lines[0].startswith("epoch 1/4") and "train_loss" in epoch_lines[0]
    assert f"model {job['model_id']}" in r.stderr and "test accuracy" in r.stderr
    # The folder was zipped as it streamed, and the server saw every image in its class.
    ds = json.loads(
        finetune("datasets", "get", job["spec"]["dataset_id"], "--json", url=server).stdout
    )
    assert ds["name"] == "cli-digits" and ds["num_samples"] == 48
    assert ds["class_counts"] == {"digit_0": 16, "digit_1": 16, "digit_2": 16}

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    paths = []
    for i, (label, img) in enumerate(digit_images(per_class=2, size=32, classes=3, offset=40)):
        paths.append(fresh / f"{i}_{label}.png")
        img.save(paths[-1])
    r = finetune("predict", job["model_id"], *map(str, paths), "--top-k", "2", "--json", url=server)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model_id"] == job["model_id"] and len(out["predictions"]) == len(paths)
    for p in out["predictions"]:
        assert p["label"] in ds["classes"] and len(p["top_k"]) == 2

    # On a terminal the same events drive a rich progress bar (replayed: the job is done).
    rc, screen = on_a_tty("jobs", "events", job["id"], "--follow", url=server)
    assert rc == 0, screen
    # layerwise: by its last epoch the head and the top blocks train
    assert f"epoch {epochs_run}/4" in screen and "succeeded" in screen and "head + top" in screen
    assert "\x1b[" in screen  # drawn with terminal control sequences, not plain lines
    assert not any(line.startswith("epoch 1/4  train_loss") for line in screen.splitlines())

    human = finetune("predict", job["model_id"], str(paths[0]), url=server)
    assert human.returncode == 0 and human.stdout.startswith(f"{paths[0]}: digit_")
    listed = finetune("models", "list", url=server)
    assert listed.returncode == 0 and job["model_id"] in listed.stdout
    exported = finetune(
        "models", "export", job["model_id"], "-o", str(tmp_path / "m.st"), url=server
    )
    assert exported.returncode == 0 and (tmp_path / "m.st").stat().st_size > 1000


def test_missing_path_is_a_usage_error(server, tmp_path):
    r = finetune("train", str(tmp_path / "nope"), "--base-model", "efficientnet_lite0", url=server)
    no_traceback(r)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: usage_error: {tmp_path / 'nope'}: no such file or folder"
    )


def test_wrong_key_is_an_auth_error_with_the_servers_code(server, digits_folder):
    r = finetune("train", str(digits_folder), "--base-model", "x", url=server, key="ft_wrong")
    no_traceback(r)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unauthorized: ") and last.endswith("(HTTP 401)")
    r = finetune("jobs", "list", url=server, key=None)
    assert r.returncode == 2 and "unauthorized" in r.stderr


def test_server_down_is_a_connection_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    r = finetune("jobs", "list", url=url)
    no_traceback(r)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"error: connection_error: cannot reach {url}")


def test_server_errors_and_usage(server):
    r = finetune("jobs", "get", "job_doesnotexist", url=server)
    no_traceback(r)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: not_found: job 'job_doesnotexist' not found (HTTP 404)"
    r = finetune("predict", "mdl_x", url=server)  # no inputs at all
    assert r.returncode == 2 and "usage_error" in r.stderr
    r = finetune("jobs", "create", "--dataset-id", "ds_nope", "--base-model", "mlp", url=server)
    assert r.returncode == 2 and "not_found" in r.stderr


@pytest.mark.slow
def test_ctrl_c_detaches_and_a_cancelled_job_exits_1(server, digits_folder):
    from app.client import Client

    client = Client(server, TEST_KEY)
    ds = client.datasets.upload(digits_folder)
    job = client.jobs.create(
        dataset_id=ds.id, base_model="efficientnet_lite0", strategy="full", epochs=300,
        image_size=32, early_stopping_patience=None,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    follower = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "jobs", "events", job.id, "--follow",
         "--url", server, "--key", TEST_KEY],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in follower.stdout:  # wait until it is following a running job
        if line.startswith("epoch "):
            break
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 130, err
    assert f"detached; job {job.id} keeps running" in out
    assert f"finetune jobs events {job.id} --follow" in out
    assert "Traceback" not in err
    assert client.jobs.get(job.id).status == "running"

    assert finetune("jobs", "cancel", job.id, url=server).returncode == 0
    r = finetune("jobs", "events", job.id, "--follow", "--json", url=server, timeout=120)
    no_traceback(r)
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "cancelled"
    assert f"error: job {job.id} cancelled" in r.stderr


@pytest.mark.slow
def test_train_a_csv_then_predict_its_rows(server, tmp_path):
    rows = ["x,color,label"] + [
        f"{i / 10:.1f},{'red' if i % 3 else 'blue'},{'high' if i >= 30 else 'low'}"
        for i in range(60)
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    r = finetune(
        "train", str(tmp_path / "train.csv"), "--task", "tabular_classification",
        "--base-model", "mlp", "--strategy", "full", "--epochs", "5", "--follow", "--json",
        url=server,
    )  # fmt: skip
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout.strip().splitlines()[-1])
    assert job["status"] == "succeeded"
    (tmp_path / "inputs.csv").write_text("x,color\n0.5,red\n5.5,\n")  # an empty cell: null
    r = finetune("predict", job["model_id"], "--csv", str(tmp_path / "inputs.csv"), "--json",
                 url=server)  # fmt: skip
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    predictions = json.loads(r.stdout.strip().splitlines()[-1])["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"high", "low"}
    r = finetune("predict", job["model_id"], "--text", "a string", url=server)
    assert r.returncode == 2 and "error: " in r.stderr and "(HTTP 4" in r.stderr
