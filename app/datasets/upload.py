"""Stream an upload to disk with a hard size cap; never hold it whole in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from app.datasets.common import IngestError

# The async writer batches small chunks into writes of this size, done off the event loop.
WRITE_BATCH = 1024 * 1024


def _check_size(written: int, max_bytes: int) -> None:
    if written > max_bytes:
        raise IngestError(
            "upload_too_large", f"the upload is larger than {max_bytes} bytes", status=413
        )


async def save_upload_stream(chunks: AsyncIterator[bytes], dest: Path, max_bytes: int) -> int:
    """Write `chunks` to `dest`; return the byte count. Over `max_bytes`: 413, no file left."""
    dest = Path(dest)
    written = 0
    pending = bytearray()
    try:
        with open(dest, "wb") as out:
            async for chunk in chunks:
                written += len(chunk)
                _check_size(written, max_bytes)
                pending += chunk
                if len(pending) >= WRITE_BATCH:
                    await asyncio.to_thread(out.write, bytes(pending))
                    pending.clear()
            if pending:
                await asyncio.to_thread(out.write, bytes(pending))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


def save_upload(chunks: Iterable[bytes], dest: Path, max_bytes: int) -> int:
    """The synchronous twin of `save_upload_stream`."""
    dest = Path(dest)
    written = 0
    try:
        with open(dest, "wb") as out:
            for chunk in chunks:
                written += len(chunk)
                _check_size(written, max_bytes)
                out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written
