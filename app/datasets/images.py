"""Image-classification datasets from ImageFolder-style archives.

Layout, after junk (`__MACOSX/`, hidden files, `Thumbs.db`) is dropped:

    <class>/<...>/<image>                      every sample; test split drawn here
    train/<class>/<image>, test/..., val/...   splits given by the archive
    <root>/... either of the above             one wrapping folder is tolerated

Every image is fully decoded before it is kept. It is stored as
`files/<6-digit index>.<ext>` (original bytes, extension from the decoded format);
member names are never used as paths.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from app.datasets.archive import Member, iter_members, sniff_format
from app.datasets.common import (
    MANIFEST_VERSION,
    ClassNames,
    IngestError,
    Limits,
    check_classes,
    check_fraction,
    check_trainable,
    show,
    staging,
    write_manifest,
)
from app.datasets.splits import split_summary, stratified_test

TASK = "image_classification"
# Pillow formats we accept, with the extension we store. Nothing that shells out (EPS)
# or that few decoders handle well.
FORMATS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tiff"}
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
JUNK_NAMES = {"__macosx", "thumbs.db", "desktop.ini"}


def is_junk(parts: tuple[str, ...]) -> bool:
    """OS litter that archivers add: not data, not an error."""
    return any(p.startswith(".") or p.lower() in JUNK_NAMES for p in parts)


def decode_image(file: Path | BinaryIO, name: str, limits: Limits) -> str:
    """Fully decode the image in `file`; return the extension to store it under, or raise.

    The pixel limit is ours (`limits.max_image_pixels`), checked from the header before
    any pixel is decoded; Pillow's own bomb guard, which reads a process-wide setting,
    is mapped to the same error should it fire first. (Turning its warning into an error
    uses `warnings.catch_warnings`, which is process-wide state in Python 3.11: concurrent
    ingests in threads may briefly see each other's filter; both want the same one.)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file, formats=list(FORMATS)) as im:
                width, height = im.size
                if width * height > limits.max_image_pixels:
                    raise IngestError(
                        "image_too_large",
                        f"image {show(name)} is {width}x{height} pixels; the limit is "
                        f"{limits.max_image_pixels} pixels",
                    )
                if im.format == "JPEG":
                    # Checked, not kept: libjpeg's 1/8 scale still reads (and checks) the
                    # whole stream, with an eighth of the IDCT work and memory.
                    im.draft(None, (max(1, width // 8), max(1, height // 8)))
                im.load()
                if im.mode != "RGB":  # what training will do; some modes cannot
                    im.convert("RGB")
                fmt = im.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise IngestError(
            "image_too_large", f"image {show(name)} is too large (a decompression bomb?): {e}"
        ) from None
    except Image.UnidentifiedImageError:
        raise IngestError(
            "not_an_image",
            f"archive member {show(name)} is not an image in a supported format "
            f"({', '.join(FORMATS)})",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise IngestError(
            "not_an_image", f"image {show(name)} cannot be decoded (truncated or corrupt): {e}"
        ) from None
    if fmt not in FORMATS:
        raise IngestError("not_an_image", f"archive member {show(name)} has unsupported format")
    return FORMATS[fmt]


def _store(member: Member, target: Path, limits: Limits) -> str:
    """Stream the member to `target`, decode it from there; return the image's extension."""
    with open(target, "w+b") as out:
        for chunk in member.chunks:
            out.write(chunk)
        out.seek(0)
        return decode_image(out, member.name, limits)


def assign_layout(paths: list[tuple[str, ...]]) -> list[tuple[str | None, str]]:
    """Map each image's path parts to (split given by the archive or None, class name)."""
    if not paths:
        raise IngestError("empty_dataset", "the archive contains no images")
    firsts = {p[0] for p in paths}
    if len(firsts) == 1 and all(len(p) >= 3 for p in paths):
        (root,) = firsts
        if root.lower() not in SPLIT_FOLDERS:  # one wrapping folder, e.g. digits/0/a.png
            paths = [p[1:] for p in paths]
    tops = {p[0].lower() for p in paths}
    use_splits = tops <= SPLIT_FOLDERS.keys() and all(len(p) >= 3 for p in paths)
    if use_splits and "train" not in {SPLIT_FOLDERS[t] for t in tops}:
        raise IngestError(
            "bad_layout",
            f"found split folders {sorted(tops)} but no train/ folder",
        )
    out: list[tuple[str | None, str]] = []
    names = ClassNames()
    for p in paths:
        split = SPLIT_FOLDERS[p[0].lower()] if use_splits else None
        rest = p[1:] if use_splits else p
        if len(rest) < 2:
            raise IngestError(
                "bad_layout",
                f"image {show('/'.join(p))} is not inside a class folder; "
                f"expected <class>/<image> or train/<class>/<image>",
            )
        out.append((split, names.add(rest[0], f"folder of {show('/'.join(p))}")))
    if use_splits:
        trained = {c for s, c in out if s == "train"}
        missing = sorted({c for _, c in out} - trained)
        if missing:
            raise IngestError(
                "bad_layout",
                f"class(es) {', '.join(show(c) for c in missing[:10])} have no images in train/",
            )
    return out


def ingest_image_archive(
    *,
    archive_path: Path,
    dest_dir: Path,
    limits: Limits = Limits(),
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """Validate an image archive into `dest_dir` (files/ + manifest.json); return the manifest."""
    check_fraction(test_fraction)
    fmt = sniff_format(archive_path)
    if fmt not in ("zip", "tar"):
        raise IngestError(
            "unsupported_format", f"expected a ZIP or tar archive of images, got a {fmt} file"
        )
    with staging(dest_dir) as work:
        files = work / "files"
        files.mkdir()
        part = work / "member.part"
        kept: list[tuple[tuple[str, ...], str, str]] = []  # (parts, source, stored path)
        for member in iter_members(archive_path, fmt, limits):
            if is_junk(member.parts):
                continue
            ext = _store(member, part, limits)
            stored = f"files/{len(kept):06d}.{ext}"
            part.rename(work / stored)
            kept.append((member.parts, member.name, stored))

        layout = assign_layout([parts for parts, _, _ in kept])
        counts = Counter(c for _, c in layout)
        check_classes(counts, limits)
        classes = sorted(counts)
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[c] for _, c in layout]
        splits = [s or "train" for s, _ in layout]
        split_source = "archive" if "test" in splits else "generated"
        need_train = 1 if "val" in splits else 2  # else the engine carves val out of train
        if split_source == "generated":
            # Draw from train in a canonical order (by class, then member name), so the
            # split does not depend on the order the archiver wrote members in.
            pool = sorted(
                (i for i, s in enumerate(splits) if s == "train"),
                key=lambda i: (labels[i], kept[i][1]),
            )
            picked = stratified_test(
                [labels[i] for i in pool], test_fraction, seed, keep=need_train
            )
            for j in picked:
                splits[pool[j]] = "test"
        totals, per_split = split_summary(splits, labels, classes)
        check_trainable(per_split, need_train=need_train, generated=split_source == "generated")
        manifest = {
            "format_version": MANIFEST_VERSION,
            "task": TASK,
            "source_format": fmt,
            "classes": classes,
            "class_counts": {c: counts[c] for c in classes},
            "num_samples": len(kept),
            "splits": totals,
            "split_class_counts": per_split,
            "split_source": split_source,
            "seed": seed,
            "test_fraction": test_fraction if split_source == "generated" else None,
            "samples": [
                {"path": stored, "label": label, "split": split, "source": source}
                for (_, source, stored), label, split in zip(kept, labels, splits, strict=True)
            ],
        }
        write_manifest(work, manifest)
    return manifest
