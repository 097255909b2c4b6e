"""Read ZIP and tar archives member by member without trusting them.

Nothing here calls `extractall` or turns a member name into a filesystem path. Each
regular file is offered as a stream of chunks; the caller decides where the bytes go.
Before a byte is offered the member's name, type and count are checked; while bytes flow,
the member size, the archive total and the compression ratio are counted on what was
actually read and decompressed, never on the sizes the archive declares.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from app.datasets.common import IngestError, Limits, show

# Small reads keep the compressed read-ahead small, so a bomb is caught after a few MB.
CHUNK = 32 * 1024
# Ratios over tiny amounts are noise (a blank 1 MB bitmap deflates 1000:1); judge after this.
RATIO_GRACE_BYTES = 1024 * 1024
# tarfile reads pax/GNU long-name headers whole; no honest header needs more than this.
MAX_TAR_READ = 4 * 1024 * 1024
# Headers and padding around each tar member, allowed on top of max_total_bytes.
TAR_OVERHEAD_PER_MEMBER = 1024

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_DRIVE = re.compile(r"^[A-Za-z]:")
_COMPRESSED_TAR = {
    b"\x1f\x8b": "gz",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
}
_CORRUPT = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    ValueError,  # includes UnicodeDecodeError from a garbled ZIP header
    struct.error,
)


@dataclass(frozen=True)
class Member:
    """A regular file in an archive: its original name, checked path parts, and its bytes."""

    name: str
    parts: tuple[str, ...]
    chunks: Iterator[bytes]


def safe_parts(name: str) -> tuple[str, ...]:
    """Split a member name into path parts, refusing anything that could escape a folder."""

    def unsafe(why: str) -> IngestError:
        return IngestError("unsafe_path", f"archive member {show(name)} {why}")

    if "\\" in name:
        raise unsafe("contains a backslash")
    if name.startswith("/"):
        raise unsafe("is an absolute path")
    if _DRIVE.match(name):
        raise unsafe("starts with a drive letter")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise unsafe("contains control characters or bytes that are not UTF-8")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise unsafe("climbs out of the archive with '..'")
    if not parts:
        raise unsafe("has an empty name")
    return parts


def _compression_of(head: bytes) -> str | None:
    for magic, kind in _COMPRESSED_TAR.items():
        if head.startswith(magic):
            return kind
    return None


def _is_tar_header(block: bytes) -> bool:
    if len(block) < 512:
        return False
    if block[:512] == bytes(512):  # an empty tar archive is only zero blocks
        return True
    try:
        tarfile.TarInfo.frombuf(block[:512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _looks_like_text(head: bytes) -> bool:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16: a CSV, in the wrong encoding
        return True
    if b"\x00" in head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return controls <= len(head) // 100


def sniff_format(path: Path) -> str:
    """Return "zip", "tar" (plain, gz, bz2 or xz) or "csv", judged by content, not by name."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise IngestError("unsupported_format", "the uploaded file is empty")
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    compression = _compression_of(head)
    if compression is not None:
        opener: Any = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression]
        try:
            with opener(path, "rb") as g:
                block = g.read(512)
        except _CORRUPT as e:
            raise IngestError(
                "unsupported_format", f"a {compression} file that cannot be decompressed: {e}"
            ) from None
        if _is_tar_header(block):
            return "tar"
        raise IngestError(
            "unsupported_format", f"a {compression}-compressed file that is not a tar archive"
        )
    if _is_tar_header(head):
        return "tar"
    if _looks_like_text(head):
        return "csv"
    raise IngestError(
        "unsupported_format",
        "not a ZIP or tar archive of images, nor a CSV file (judged by content, not by name)",
    )


class _CountingFile:
    """A binary file that counts the bytes read from it: the compressed side of a ratio."""

    mode = "rb"

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class _Budget:
    """Counts decompressed bytes against the limits."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.total = 0  # decompressed bytes of all members so far
        self.consumed = 0  # compressed bytes read for them (ZIP; tar counts its whole stream)

    def check_ratio(self, produced: int, consumed: int, what: str) -> None:
        if produced > RATIO_GRACE_BYTES and produced > self.limits.max_ratio * max(consumed, 1):
            raise IngestError(
                "compression_ratio",
                f"{what} decompresses more than {self.limits.max_ratio:g} times its "
                f"compressed size (a decompression bomb?)",
            )

    def add(self, n: int, member_size: int, name: str) -> None:
        self.total += n
        if member_size > self.limits.max_member_bytes:
            raise IngestError(
                "archive_too_large",
                f"archive member {show(name)} is larger than "
                f"{self.limits.max_member_bytes} bytes when decompressed",
            )
        if self.total > self.limits.max_total_bytes:
            raise self.total_too_large()

    def total_too_large(self) -> IngestError:
        return IngestError(
            "archive_too_large",
            f"the archive holds more than {self.limits.max_total_bytes} bytes when decompressed",
        )

    def count_member(self, members: int) -> None:
        if members > self.limits.max_members:
            raise IngestError(
                "archive_too_large", f"the archive has more than {self.limits.max_members} members"
            )


def iter_members(path: Path, fmt: str, limits: Limits) -> Iterator[Member]:
    """Yield each regular file of a "zip" or "tar" archive, checked, with a chunk stream.

    Consume (or drop) a member's chunks before asking for the next member. Directories
    are checked and skipped; links, devices and other special members are refused.
    """
    if fmt == "zip":
        yield from _zip_members(path, limits)
    elif fmt == "tar":
        yield from _tar_members(path, limits)
    else:
        raise IngestError("unsupported_format", f"expected a ZIP or tar archive, got {fmt}")


def _corrupt(e: BaseException) -> IngestError:
    return IngestError(
        "corrupt_archive", f"the archive is corrupt or truncated: {show(str(e), 200)}"
    )


def _zip_members(path: Path, limits: Limits) -> Iterator[Member]:
    budget = _Budget(limits)
    with open(path, "rb") as f:
        raw = _CountingFile(f)
        try:
            zf = zipfile.ZipFile(raw)  # type: ignore[arg-type]
            infos = zf.infolist()
        except _CORRUPT as e:
            raise _corrupt(e) from None
        budget.count_member(len(infos))
        for info in infos:
            parts = safe_parts(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise IngestError(
                    "symlink_in_archive", f"archive member {show(info.filename)} is a symbolic link"
                )
            if info.is_dir() or stat.S_ISDIR(mode):
                continue
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise IngestError(
                    "special_file_in_archive",
                    f"archive member {show(info.filename)} is not a regular file",
                )
            if info.flag_bits & 0x1:
                raise IngestError(
                    "encrypted_archive", f"archive member {show(info.filename)} is encrypted"
                )
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                # zipfile decompresses bzip2/lzma members without an output bound.
                raise IngestError(
                    "unsupported_format",
                    f"archive member {show(info.filename)} uses compression method "
                    f"{info.compress_type}; use deflate or store",
                )
            yield Member(info.filename, parts, _zip_chunks(zf, info, raw, budget))


def _zip_chunks(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, raw: _CountingFile, budget: _Budget
) -> Iterator[bytes]:
    # Compressed bytes are what this member made zipfile read from disk (its local header
    # included): overlapping members that share one compressed body each pay for it.
    seen = raw.bytes_read
    produced = consumed = 0
    try:
        with zf.open(info) as stream:
            while chunk := stream.read(CHUNK):
                produced += len(chunk)
                consumed += raw.bytes_read - seen
                budget.consumed += raw.bytes_read - seen
                seen = raw.bytes_read
                budget.add(len(chunk), produced, info.filename)
                budget.check_ratio(produced, consumed, f"archive member {show(info.filename)}")
                budget.check_ratio(budget.total, budget.consumed, "the archive")
                yield chunk
    except _CORRUPT as e:
        raise _corrupt(e) from None


class _TarStream:
    """The decompressed tar stream, policed: bounded reads, bounded size, bounded ratio."""

    mode = "rb"

    def __init__(self, inner: Any, raw: _CountingFile, budget: _Budget):
        self._inner = inner
        self._raw = raw
        self._budget = budget
        self.pos = 0
        self.last_block = (-1, b"")
        limits = budget.limits
        self._max_pos = limits.max_total_bytes + TAR_OVERHEAD_PER_MEMBER * limits.max_members

    def _check(self) -> None:
        if self.pos > self._max_pos:
            raise self._budget.total_too_large()
        self._budget.check_ratio(self.pos, self._raw.bytes_read, "the archive")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_TAR_READ:
            raise IngestError("corrupt_archive", "a tar header declares an oversized record")
        data = self._inner.read(n)
        if n <= tarfile.BLOCKSIZE:  # remember headers: going back in a gzip stream costs a rewind
            self.last_block = (self.pos, data)
        self.pos += len(data)
        self._check()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise OSError("the tar stream only seeks to absolute offsets")
        if offset > self._max_pos:
            self.pos = offset
            self._check()
        self.pos = self._inner.seek(offset)
        self._check()
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def _tar_members(path: Path, limits: Limits) -> Iterator[Member]:
    budget = _Budget(limits)
    with open(path, "rb") as f:
        raw = _CountingFile(f)
        compression = _compression_of(f.read(8))
        f.seek(0)
        inner: Any = raw
        if compression == "gz":
            inner = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
        elif compression == "bz2":
            inner = bz2.BZ2File(raw)  # type: ignore[arg-type]
        elif compression == "xz":
            inner = lzma.LZMAFile(raw)  # type: ignore[arg-type]
        stream = _TarStream(inner, raw, budget)
        try:
            tf = tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]
        except _CORRUPT as e:
            raise _corrupt(e) from None
        count = 0
        while True:
            try:
                info = tf.next()
            except _CORRUPT as e:
                raise _corrupt(e) from None
            if info is None:
                _check_tar_end(tf, stream)
                break
            tf.members.clear()  # tarfile remembers every header; we stream, so don't let it grow
            count += 1
            budget.count_member(count)
            parts = safe_parts(info.name)
            if info.issym() or info.islnk():
                kind = "symbolic" if info.issym() else "hard"
                raise IngestError(
                    "symlink_in_archive", f"archive member {show(info.name)} is a {kind} link"
                )
            if info.isdir():
                continue
            if not info.isreg():
                raise IngestError(
                    "special_file_in_archive",
                    f"archive member {show(info.name)} is not a regular file (device, fifo, ...)",
                )
            if info.size > limits.max_member_bytes:  # tar sizes are exact; refuse before reading
                budget.add(0, info.size, info.name)
            yield Member(info.name, parts, _tar_chunks(tf, info, budget))


def _check_tar_end(tf: tarfile.TarFile, stream: _TarStream) -> None:
    """tarfile ends quietly at an invalid header; insist the archive really ended there."""
    at, block = stream.last_block
    if at != tf.offset:
        try:
            stream.seek(tf.offset)
            block = stream.read(tarfile.BLOCKSIZE)
        except _CORRUPT as e:
            raise _corrupt(e) from None
    if block.strip(b"\0"):
        raise IngestError("corrupt_archive", f"invalid tar header at offset {tf.offset}")


def _tar_chunks(tf: tarfile.TarFile, info: tarfile.TarInfo, budget: _Budget) -> Iterator[bytes]:
    produced = 0
    try:
        stream = tf.extractfile(info)
        assert stream is not None  # regular files always have a stream
        with stream:
            while chunk := stream.read(CHUNK):
                produced += len(chunk)
                budget.add(len(chunk), produced, info.name)
                yield chunk
    except _CORRUPT as e:
        raise _corrupt(e) from None
