"""Dataset ingestion: the one module the API imports.

    from app.datasets.ingest import IngestError, Limits, ingest_dataset, save_upload_stream

Everything here is pure Python (Pillow for images); errors are `IngestError(code,
message, status)`, which the API turns into `{"error": {"code", "message"}}`.
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
