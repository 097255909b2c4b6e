"""Dataset ingestion: the one module the API imports.

    from app.datasets.ingest import IngestError, Limits, ingest_dataset, save_upload_stream

Pure Python (Pillow for images): no web framework, database or torch. Every problem with
the data is an `IngestError(code, message, status)`; the API answers
`{"error": {"code": e.code, "message": e.message}}` with `e.status` (422, or 413 for
`upload_too_large`). Any other exception is a bug. On error nothing is left in
`dest_dir` (and a `dest_dir` the call created is removed); `dest_dir` must be absent or
empty (else FileExistsError, a caller bug).

Codes: unsupported_format, corrupt_archive, encrypted_archive, unsafe_path,
symlink_in_archive (symbolic and hard links), special_file_in_archive (devices, fifos),
archive_too_large (members, member bytes or total bytes over the limits),
compression_ratio, not_an_image (also truncated/corrupt images), image_too_large,
bad_layout, bad_class_name, empty_dataset, single_class, too_few_classes,
too_few_samples; for CSVs also missing_column, bad_csv, bad_encoding, empty_text,
too_many_rows, unsupported_task, missing_task; invalid_parameter; upload_too_large (413).

`dest_dir/manifest.json` (also returned) for an image archive:

    {"format_version": 1, "task": "image_classification", "source_format": "zip",
     "classes": ["cat", "dog"], "class_counts": {"cat": 10, "dog": 12},
     "num_samples": 22, "splits": {"train": 17, "val": 0, "test": 5},
     "split_class_counts": {"train": {"cat": 8, "dog": 9}, "val": {...}, "test": {...}},
     "split_source": "generated",   # "archive" when it had a test/ folder
     "seed": 0, "test_fraction": 0.2,   # null when the archive gave the test split
     "samples": [{"path": "files/000000.png", "label": 0, "split": "train",
                  "source": "cats/img1.png"}, ...]}

`label` indexes `classes` (sorted). `val` is non-empty only when the archive has a
val/ folder; the engine carves validation from train otherwise. For a CSV the manifest
has no `samples`; the rows are in `dest_dir/data.csv` with a last column `split`, and
the manifest adds `data_file`, `columns`, `label_column`, `split_column`, and
`text_column` (text) or `feature_columns`, `feature_types` ({col: "numeric" |
"categorical"}), `missing_counts` and `categories` ({col: sorted values, or null past
1000}) (tabular).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.datasets.archive import sniff_format
from app.datasets.common import MANIFEST_NAME, IngestError, Limits
from app.datasets.images import TASK as IMAGE_TASK
from app.datasets.images import ingest_image_archive
from app.datasets.tabular import TASKS as CSV_TASKS
from app.datasets.tabular import ingest_csv
from app.datasets.upload import save_upload, save_upload_stream

__all__ = [
    "MANIFEST_NAME",
    "IngestError",
    "Limits",
    "ingest_csv",
    "ingest_dataset",
    "ingest_image_archive",
    "save_upload",
    "save_upload_stream",
    "sniff_format",
]


def ingest_dataset(
    *,
    path: Path,
    dest_dir: Path,
    task: str | None = None,
    label_column: str = "label",
    text_column: str = "text",
    limits: Limits = Limits(),
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """Ingest an uploaded file of any supported kind, chosen by its content.

    `task` defaults to image_classification for archives; a CSV needs text_ or
    tabular_classification.
    """
    fmt = sniff_format(path)
    if fmt in ("zip", "tar"):
        if task not in (None, IMAGE_TASK):
            raise IngestError(
                "unsupported_format", f"task {task!r} needs a CSV file; this is a {fmt} archive"
            )
        return ingest_image_archive(
            archive_path=path,
            dest_dir=dest_dir,
            limits=limits,
            seed=seed,
            test_fraction=test_fraction,
        )
    if task is None or task == IMAGE_TASK:
        raise IngestError(
            "unsupported_format" if task else "missing_task",
            "a CSV file needs task="
            + " or ".join(CSV_TASKS)
            + ("" if task is None else "; image_classification needs a ZIP or tar archive"),
        )
    return ingest_csv(
        csv_path=path,
        dest_dir=dest_dir,
        task=task,
        label_column=label_column,
        text_column=text_column,
        limits=limits,
        seed=seed,
        test_fraction=test_fraction,
    )
