"""Write a file or a directory so that a reader sees the old one or the whole new one.

The idiom: write beside the target under a name no other writer uses (pid, thread and a
random part), then `os.replace`, which is atomic on one filesystem. A writer that fails
leaves no temp behind. Concurrent writers of the same target race harmlessly: the last
rename wins and each rename installs a whole file.

No dependencies beyond the standard library: the engine, the service and the client
SDK all use it.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temp_beside(path: Path) -> Path:
    unique = f"{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"
    return path.with_name(f"{path.name}.{unique}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; write it, and on leaving the block it replaces
    `path` (`fsync`: flushed to disk first, so a power cut keeps the previous file or the
    new one, never an empty one). On an error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """`path` holds `data`, or what it held before; never a part."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp directory beside `path`; fill it, and on leaving the block it
    takes the place of `path` (an existing `path` is removed first: a reader may find no
    directory for a moment, never a half-written one). On an error the temp is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
