"""The embedded broker's transport on a full disk and with broken messages in its queue
(real kombu connections on a real filesystem: a 1 MiB tmpfs when it can be mounted)."""

import errno

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError

from app.jobs import fsbroker
from tests.helpers import small_tmpfs

# kombu keeps declared exchanges in class-level state: a queue name per test, so a second
# connection in this process (to another folder) declares its own.
FULL, BROKEN = "fsb_full", "fsb_broken"


def _connection(root) -> Connection:
    queue, control = root / "queue", root / "control"
    queue.mkdir(exist_ok=True)
    control.mkdir(exist_ok=True)
    options = {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(control),
        "store_processed": False,
    }
    return Connection(f"{fsbroker.ALIAS}://", transport_options=options)


def _fill(path) -> None:
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 10, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break


@pytest.fixture
def tiny_disk(tmp_path):
    with small_tmpfs(tmp_path / "broker", "1m") as mount:
        yield mount


def test_a_send_that_fails_on_a_full_disk_leaves_no_message(tiny_disk):
    with _connection(tiny_disk) as conn:
        q = conn.SimpleQueue(FULL)
        q.put({"job_id": "job_1"})  # fits
        _fill(tiny_disk / "filler")
        with pytest.raises(ChannelError):
            q.put({"job_id": "job_2", "pad": "x" * 8192})
        files = sorted((tiny_disk / "queue").iterdir())
        assert len(files) == 1 and all(p.stat().st_size > 0 for p in files), files
        (tiny_disk / "filler").unlink()
        assert q.get(timeout=5).payload == {"job_id": "job_1"}
        q.close()


def test_malformed_messages_are_moved_aside_and_the_next_one_is_read(tmp_path):
    with _connection(tmp_path) as conn:
        q = conn.SimpleQueue(BROKEN)
        queue = tmp_path / "queue"
        (queue / f"0000000000001_a.{BROKEN}.msg").write_bytes(b"")
        (queue / f"0000000000002_b.{BROKEN}.msg").write_bytes(b"{not json")
        q.put({"job_id": "job_ok"})
        assert q.get(timeout=5).payload == {"job_id": "job_ok"}
        assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == [
            f"0000000000001_a.{BROKEN}.msg",
            f"0000000000002_b.{BROKEN}.msg",
        ]
        assert not list(queue.iterdir())
        q.close()
