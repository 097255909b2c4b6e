"""Where datasets, job work dirs (checkpoints) and model artifacts live.

One directory tree under FINETUNE_DATA_DIR. Scaled out, that directory is a shared mount
(NFS, EFS, a CSI volume) seen by the API and every worker at the same path.
"""

import shutil
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from app.core.config import Settings
from app.core.errors import ApiError

CHUNK = 1024 * 1024


def copy_bounded(src: BinaryIO, dest: Path, max_bytes: int, digest=None) -> int:
    """Copy an upload to disk in chunks, refusing it (413) once it passes `max_bytes`
    (feeding each chunk to `digest`, a hashlib object, when given)."""
    written = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise ApiError(
                    f"upload is larger than the limit of {max_bytes} bytes",
                    code="upload_too_large",
                    status=413,
                )
            out.write(chunk)
            if digest is not None:
                digest.update(chunk)
    return written


class LocalStorage:
    def __init__(self, settings: Settings):
        self.settings = settings

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.settings.datasets_dir / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def model_dir(self, model_id: str) -> Path:
        return self.settings.models_dir / model_id

    def features_dir(self, dataset_id: str) -> Path:
        """Frozen features of one dataset, shared by its jobs (removed with the dataset)."""
        return self.settings.data_dir / "features" / dataset_id

    def cache_dir(self) -> Path:
        return self.settings.cache_dir

    def scratch_path(self, suffix: str = "") -> Path:
        """A fresh path for an upload in flight, on the same filesystem as its destination."""
        return self.settings.data_dir / "uploads" / f"{uuid.uuid4().hex}{suffix}"

    def sweep_scratch(self, *, older_than_s: float) -> list[Path]:
        """Remove uploads in flight and half-ingested datasets left by a killed process.

        Only what is older than `older_than_s`: another API replica may be mid-upload.
        """
        cutoff = time.time() - older_than_s
        leftovers = [
            *(self.settings.data_dir / "uploads").glob("*"),
            *self.settings.datasets_dir.glob("*.partial"),
        ]
        removed = []
        for path in leftovers:
            try:
                if path.lstat().st_mtime < cutoff:
                    self.remove(path)
                    removed.append(path)
            except FileNotFoundError:
                continue
        return removed

    @staticmethod
    def remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def base_model_dir(self, upload_id: str) -> Path:
        """Uploaded pretrained weights (`upload:<id>`)."""
        return self.settings.data_dir / "base_models" / upload_id
