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


def test_copy_bounded_refuses_an_upload_past_the_limit_as_it_reads(tmp_path):
    # The one upload writer (datasets and base-model uploads): it stops reading at the cap.
    import hashlib
    import io

    import pytest

    from app.core.errors import ApiError
    from app.storage.local import CHUNK, copy_bounded

    digest = hashlib.sha256()
    dest = tmp_path / "sub" / "up.bin"
    assert copy_bounded(io.BytesIO(b"abcd"), dest, max_bytes=4, digest=digest) == 4
    assert dest.read_bytes() == b"abcd"
    assert digest.hexdigest() == hashlib.sha256(b"abcd").hexdigest()
    src = io.BytesIO(bytes(10 * CHUNK))
    with pytest.raises(ApiError) as err:
        copy_bounded(src, dest, max_bytes=2 * CHUNK)
    assert (err.value.code, err.value.status) == ("upload_too_large", 413)
    assert src.tell() == 3 * CHUNK  # the rest was never read
