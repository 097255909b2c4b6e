import os
import time

from app.core.config import Settings
from app.storage.local import LocalStorage


def test_sweep_removes_only_old_scratch(tmp_path):
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    storage = LocalStorage(settings)
    old_upload = storage.scratch_path()
    old_upload.write_bytes(b"x" * 10)
    old_partial = settings.datasets_dir / "ds_x.partial"
    (old_partial / "files").mkdir(parents=True)
    fresh_upload = storage.scratch_path()
    fresh_upload.write_bytes(b"y")
    dataset = settings.datasets_dir / "ds_kept"
    dataset.mkdir()
    hours_ago = time.time() - 7 * 3600
    for p in (old_upload, old_partial, dataset):
        os.utime(p, (hours_ago, hours_ago))

    removed = storage.sweep_scratch(older_than_s=6 * 3600)

    assert sorted(removed) == sorted([old_upload, old_partial])
    assert not old_upload.exists() and not old_partial.exists()
    assert fresh_upload.exists() and dataset.exists()
