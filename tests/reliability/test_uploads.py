"""Hostile uploads through POST /v1/datasets on a live server: every one is a 4xx JSON
error that names the problem, nothing is left on disk, the server stays healthy, and an
oversized upload is refused while streaming without the server holding it in memory."""

import json
import select
import socket
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_KEY
from tests.datasets.conftest import (
    digit_pngs,
    imagefolder,
    png_bomb_header,
    tar_special,
    write_tar,
    write_zip,
    zip_bomb,
    zip_symlink,
)
from tests.reliability.conftest import Live

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def good() -> list[tuple[str, bytes]]:
    """A valid 2-class ImageFolder that each hostile archive hides its payload among."""
    return imagefolder(digit_pngs(classes=(0, 1), per_class=4))


def _leftovers(live: Live) -> dict[str, set[str]]:
    """What sits in the places an upload passes through: datasets, uploads, the server's
    temp dir (where multipart parsing spools files)."""
    dirs = {
        "datasets": live.data_dir / "datasets",
        "uploads": live.data_dir / "uploads",
        "tmp": Path(live.env["TMPDIR"]),
    }
    return {k: {p.name for p in d.iterdir()} if d.exists() else set() for k, d in dirs.items()}


def _csv(text: bytes) -> tuple[str, bytes]:
    return ("data.csv", text)


def _cases(tmp: Path, good: list) -> list[tuple[str, Path, dict, str, str]]:
    """(case, file, form fields, expected error code, a word the message must contain)."""
    digits = digit_pngs(classes=(0, 1, 2), per_class=3)
    png = digits["0"][0]
    cases = [
        (
            "traversal ../",
            write_zip(tmp / "a.zip", [*good, ("../evil/x.png", png)]),
            {},
            "unsafe_path",
            "..",
        ),
        (
            "traversal nested",
            write_zip(tmp / "b.zip", [*good, ("0/../../x.png", png)]),
            {},
            "unsafe_path",
            "..",
        ),
        (
            "absolute path",
            write_zip(tmp / "c.zip", [*good, ("/etc/evil.png", png)]),
            {},
            "unsafe_path",
            "absolute",
        ),
        (
            "backslashes",
            write_zip(tmp / "d.zip", [*good, ("..\\..\\evil.png", png)]),
            {},
            "unsafe_path",
            "backslash",
        ),
        (
            "zip symlink",
            write_zip(tmp / "e.zip", [*good, zip_symlink("0/link.png", "/etc/passwd")]),
            {},
            "symlink_in_archive",
            "link",
        ),
        (
            "tar symlink",
            write_tar(
                tmp / "f.tar.gz", [*good, tar_special("0/link.png", tarfile.SYMTYPE, "/etc/passwd")]
            ),
            {},
            "symlink_in_archive",
            "link",
        ),
        (
            "tar hardlink",
            write_tar(
                tmp / "g.tar",
                [*good, tar_special("0/hard.png", tarfile.LNKTYPE, "../../../etc/passwd")],
                mode="w",
            ),
            {},
            "symlink_in_archive",
            "link",
        ),
        (
            "zip bomb",
            zip_bomb(tmp / "h.zip", megabytes=300, extra=good),
            {},
            "compression_ratio",
            "bomb",
        ),
        (
            "png bomb",
            write_zip(tmp / "i.zip", [*good, ("1/bomb.png", png_bomb_header())]),
            {},
            "image_too_large",
            "pixels",
        ),
        (
            "truncated image",
            write_zip(tmp / "j.zip", [*good, ("1/cut.png", png[: len(png) // 2])]),
            {},
            "not_an_image",
            "cut.png",
        ),
        (
            "non-image file",
            write_zip(tmp / "k.zip", [*good, ("1/notes.png", b"hello " * 50)]),
            {},
            "not_an_image",
            "notes.png",
        ),
        ("empty zip", write_zip(tmp / "l.zip", []), {}, "empty_dataset", "no"),
        ("empty tar", write_tar(tmp / "m.tar", [], mode="w"), {}, "empty_dataset", "no"),
        (
            "single class",
            write_zip(tmp / "n.zip", imagefolder({"0": digits["0"]})),
            {},
            "single_class",
            "at least 2",
        ),
        (
            "not an archive",
            _write(tmp / "o.bin", bytes(range(256)) * 40),
            {},
            "unsupported_format",
            "",
        ),
        ("empty file", _write(tmp / "p.zip", b""), {}, "empty_upload", "empty"),
        (
            "csv without label column",
            _write(tmp / "q.csv", b"a,b\n1,2\n3,4\n5,6\n"),
            {"task": "tabular_classification"},
            "missing_column",
            "label",
        ),
        (
            "csv ragged rows",
            _write(tmp / "r.csv", b"x,label\n1,a\n2,b,extra\n3,a\n4,b\n"),
            {},
            "bad_csv",
            "line",
        ),
        (
            "csv bad encoding",
            _write(tmp / "s.csv", b"text,label\ncaf\xe9 au lait,a\nol\xe9,b\nx,a\ny,b\n"),
            {"task": "text_classification"},
            "bad_encoding",
            "UTF-8",
        ),
        # Past FINETUNE_MAX_UPLOAD_BYTES (32 MiB) by less than the multipart allowance that
        # the body-size middleware gives: the service's own bounded copy refuses it.
        (
            "just over the limit",
            _write(tmp / "t.zip", b"PK" + bytes(32 * MiB + 300 * 1024)),
            {},
            "upload_too_large",
            "limit",
        ),
    ]
    return cases


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_hostile_uploads_get_named_4xx_and_leave_nothing(embedded: Live, tmp_path, good):
    client = embedded.new_owner()
    before = _leftovers(embedded)
    failures = []
    for case, path, form, code, word in _cases(tmp_path, good):
        with path.open("rb") as f:
            r = client.post("/v1/datasets", files={"file": (path.name, f)}, data=form)
        body = r.json() if r.headers.get("content-type") == "application/json" else r.text
        ok = (
            400 <= r.status_code < 500
            and isinstance(body, dict)
            and body["error"]["code"] == code
            and word.lower() in body["error"]["message"].lower()
        )
        if not ok:
            failures.append((case, r.status_code, body))
        after = _leftovers(embedded)
        if after != before:
            failures.append((case, "left on disk", {k: after[k] - before[k] for k in after}))
        print(f"  {case:26s} {r.status_code} {json.dumps(body)[:150]}")
    assert not failures, "\n".join(map(str, failures))
    assert client.get("/v1/datasets").json()["total"] == 0
    assert client.get("/healthz").json() == {"status": "ok"}


def _peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def _raw_upload(port: int, total: int, declare_length: bool) -> tuple[int, dict, int]:
    """POST a multipart upload of `total` bytes over a raw socket, 1 MiB at a time, and stop
    sending as soon as the server answers. Returns (status, JSON body, bytes sent)."""
    boundary = "relboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.zip"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + total + len(tail)
    framing = (
        f"Content-Length: {length}\r\n" if declare_length else "Transfer-Encoding: chunked\r\n"
    )
    request = (
        f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TEST_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{framing}\r\n"
    ).encode()

    def frame(data: bytes) -> bytes:
        return data if declare_length else f"{len(data):x}\r\n".encode() + data + b"\r\n"

    chunk = b"PK" + bytes(MiB - 2)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request + frame(head))
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(frame(chunk))
                sent += len(chunk)
            else:
                sock.sendall(frame(tail) + (b"" if declare_length else b"0\r\n\r\n"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = b""
        sock.settimeout(30)
        while b"\r\n\r\n" not in response or len(response) < _expected_len(response):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    status_line, _, rest = response.partition(b"\r\n")
    body = rest.split(b"\r\n\r\n", 1)[1]
    return int(status_line.split()[1]), json.loads(body), sent


def _expected_len(response: bytes) -> int:
    head, _, _ = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 1 << 62


@pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
def test_upload_over_the_limit_is_refused_while_streaming(embedded: Live, declare_length):
    """300 MiB against a 32 MiB limit: 413 after about the limit, the server's peak RSS
    barely moves, nothing is left on disk."""
    pid = embedded.api.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss_before, _ = _peak_rss_mb(pid)
    before = _leftovers(embedded)
    t0 = time.monotonic()
    status, body, sent = _raw_upload(embedded.port, 300 * MiB, declare_length)
    _, peak_after = _peak_rss_mb(pid)
    assert status == 413, body
    assert body["error"]["code"] in ("upload_too_large", "payload_too_large")
    assert str(32 * MiB) in body["error"]["message"] or "limit" in body["error"]["message"]
    assert sent < 100 * MiB, f"the server read {sent} bytes before refusing"
    assert peak_after - rss_before < 100, (rss_before, peak_after)
    deadline = time.monotonic() + 10
    while _leftovers(embedded) != before and time.monotonic() < deadline:
        time.sleep(0.2)  # the request's spooled temp file is closed as the request ends
    assert _leftovers(embedded) == before
    assert httpx.get(f"{embedded.base}/healthz").json() == {"status": "ok"}
    print(
        f"\n[413 {'content-length' if declare_length else 'chunked'}] refused after "
        f"{sent / MiB:.0f} MiB sent, {time.monotonic() - t0:.2f}s; server RSS "
        f"{rss_before:.0f} MiB -> peak {peak_after:.0f} MiB"
    )
