"""Dataset ingestion: the one dispatch, used by the API (datasets/service.py) and the tests.

    from app.datasets.ingest import IngestError, Limits, ingest_dataset

`ingest_dataset` judges the file by its content (ZIP / tar archive or CSV), takes the task
as given or infers it (an archive is images; a CSV with the text column is text, any
other CSV tabular), refuses a task the file cannot be, and calls the one ingester for
(format, task): image class folders (images.py), an archive with labels.csv or a CSV
with multi-label / regression targets (targets.py), a classification CSV (tabular.py).

Pure Python (Pillow for images): no web framework, database or torch. Every problem with
the data is an `IngestError(code, message, status)`; the API answers
`{"error": {"code": e.code, "message": e.message, "field"?}}` with `e.status` (422).
Any other exception is a bug. On error nothing is left in
`dest_dir` (and a `dest_dir` the call created is removed); `dest_dir` must be absent or
empty (else FileExistsError, a caller bug).

Codes: unsupported_format, corrupt_archive, encrypted_archive, unsafe_path,
symlink_in_archive (symbolic and hard links), special_file_in_archive (devices, fifos),
archive_too_large (members, member bytes or total bytes over the limits),
compression_ratio, not_an_image (also truncated/corrupt images), image_too_large,
bad_layout, bad_class_name, empty_dataset, single_class, too_few_classes,
too_few_samples; for CSVs also missing_column, bad_csv, bad_encoding, empty_text,
too_many_rows, unsupported_task; task_mismatch (field `task`: an archive for a text or
tabular task, a CSV for an image task); invalid_parameter.

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
from app.datasets.targets import (
    DEFAULT_SEPARATOR,
    ingest_csv_targets,
    ingest_labelled_archive,
    is_target_task,
)

# The ingesters themselves stay importable from here (the tests call them directly).
__all__ = [
    "MANIFEST_NAME",
    "IngestError",
    "Limits",
    "ingest_csv",
    "ingest_dataset",
    "ingest_image_archive",
    "resolve_task",
    "sniff_format",
]

ARCHIVE_FORMATS = ("zip", "tar")
TEXT_TASK, TABULAR_TASK = CSV_TASKS


def resolve_task(fmt: str, task: str | None, *, text_column: str, path: Path) -> str:
    """The task of a file of format `fmt`: `task` when the file can be one, else a
    task_mismatch; without a task, images for an archive, and for a CSV text when its
    header has `text_column`, else tabular."""
    if fmt in ARCHIVE_FORMATS:
        if task is not None and not task.startswith("image_"):
            raise _mismatch(f"task {task!r} needs a CSV file; an archive is an image dataset")
        return task or IMAGE_TASK
    if task is not None and task.startswith("image_"):
        raise _mismatch(
            f"{task} needs a ZIP or tar archive (of class folders, or with a labels.csv)"
        )
    if task:
        return task
    with path.open("rb") as f:
        header = f.readline(64 * 1024).decode("utf-8-sig", errors="replace")
    columns = [c.strip().strip('"') for c in header.strip().split(",")]
    return TEXT_TASK if text_column in columns else TABULAR_TASK


def _mismatch(message: str) -> IngestError:
    error = IngestError("task_mismatch", message)
    error.field = "task"  # the request field at fault (the API names it)
    return error


def ingest_dataset(
    *,
    path: Path,
    dest_dir: Path,
    task: str | None = None,
    label_column: str = "label",
    text_column: str = "text",
    label_separator: str = DEFAULT_SEPARATOR,
    limits: Limits = Limits(),
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """Ingest an uploaded file into `dest_dir` (absent or empty); returns the manifest,
    whose `task` is the task resolved (see above)."""
    path = Path(path)
    fmt = sniff_format(path)
    task = resolve_task(fmt, task, text_column=text_column, path=path)
    split = {"limits": limits, "seed": seed, "test_fraction": test_fraction}
    if fmt in ARCHIVE_FORMATS:
        if is_target_task(task):  # multi-label / regression: labels.csv beside the images
            return ingest_labelled_archive(
                archive_path=path,
                dest_dir=dest_dir,
                task=task,
                label_separator=label_separator,
                **split,
            )
        if task != IMAGE_TASK:
            raise IngestError("unsupported_task", f"unknown task {task!r} for an archive")
        return ingest_image_archive(archive_path=path, dest_dir=dest_dir, **split)
    if is_target_task(task):
        return ingest_csv_targets(
            csv_path=path,
            dest_dir=dest_dir,
            task=task,
            label_column=label_column,
            text_column=text_column,
            label_separator=label_separator,
            **split,
        )
    return ingest_csv(
        csv_path=path,
        dest_dir=dest_dir,
        task=task,
        label_column=label_column,
        text_column=text_column,
        **split,
    )
