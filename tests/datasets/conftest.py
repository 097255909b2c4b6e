"""Builders for real (and hostile) dataset files, made in tmp_path at test time.

No binary fixture is committed: every archive, image and CSV is generated here.
"""

from __future__ import annotations

import io
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

Entry = tuple[str, bytes]


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def digit_pngs(classes: Iterable[int] = (0, 1, 2), per_class: int = 10) -> dict[str, list[bytes]]:
    """sklearn's 8x8 digits, upscaled to 32x32 grey PNGs: {"0": [png, ...], ...}."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out: dict[str, list[bytes]] = {}
    for c in classes:
        images = digits.images[digits.target == c][:per_class]
        out[str(c)] = [
            png_bytes(np.kron((img * 255 / 16).astype(np.uint8), np.ones((4, 4), np.uint8)))
            for img in images
        ]
    return out


def imagefolder(images: dict[str, list[bytes]], prefix: str = "") -> list[Entry]:
    return [
        (f"{prefix}{cls}/img_{i:03d}.png", data)
        for cls, blobs in images.items()
        for i, data in enumerate(blobs)
    ]


def write_zip(path: Path, entries: Iterable[Entry | zipfile.ZipInfo | tuple]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            if isinstance(entry[0], zipfile.ZipInfo):
                zf.writestr(entry[0], entry[1])
            else:
                zf.writestr(entry[0], entry[1])
    return path


def write_tar(path: Path, entries: Iterable[Entry | tarfile.TarInfo], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def png_bomb_header(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG that declares width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(bytes(width + 1) * 16)  # a few rows of zeros; the rest never comes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zip_bomb(path: Path, megabytes: int = 200, extra: Iterable[Entry] = ()) -> Path:
    """`megabytes` MB of zeros in one deflated member (about 1/1000 of that on disk).

    Written in 1 MB pieces so building it does not itself need the memory a bomb costs.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in extra:
            zf.writestr(name, data)
        zero = bytes(1024 * 1024)
        with zf.open("bomb/zeros.png", "w", force_zip64=True) as out:
            for _ in range(megabytes):
                out.write(zero)
    return path


def tar_bomb(path: Path, megabytes: int = 60) -> Path:
    """A .tar.gz holding one member of `megabytes` MB of zeros, streamed in."""
    zero = bytes(1024 * 1024)

    class Zeros(io.RawIOBase):
        left = megabytes * len(zero)

        def readable(self) -> bool:
            return True

        def readinto(self, b):  # type: ignore[override]
            n = min(len(b), self.left)
            b[:n] = zero[:n] if n <= len(zero) else bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=9) as tf:
        info = tarfile.TarInfo("bomb/zeros.png")
        info.size = megabytes * len(zero)
        tf.addfile(info, io.BufferedReader(Zeros()))
    return path


@pytest.fixture(scope="session")
def digits() -> dict[str, list[bytes]]:
    return digit_pngs()
