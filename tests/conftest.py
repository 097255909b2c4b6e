import os
import uuid
from pathlib import Path

import pytest

TEST_KEY = "ft_test_admin_key_0123456789abcdefghijklmnop"


def _reset() -> None:
    from app.core.db import reset_caches
    from app.jobs.queue import get_celery

    reset_caches()
    get_celery.cache_clear()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch) -> Path:
    """A fresh embedded installation: SQLite + filesystem broker under tmp_path."""
    d = tmp_path / "var"
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(d))
    monkeypatch.setenv("FINETUNE_API_KEY", TEST_KEY)
    monkeypatch.delenv("FINETUNE_DATABASE_URL", raising=False)
    monkeypatch.delenv("FINETUNE_BROKER_URL", raising=False)
    _reset()
    from app.core.config import get_settings
    from app.core.migrate import upgrade

    get_settings().ensure_dirs()
    upgrade()
    yield d
    _reset()


@pytest.fixture
def api(data_dir):
    """The app in-process through real ASGI HTTP, authenticated as the admin."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {TEST_KEY}"}) as client:
        yield client


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway database on the local PostgreSQL server."""
    import psycopg

    name = f"finetune_test_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url():
    """A Redis database index of its own, flushed before and after."""
    import redis

    index = int(os.environ.get("FINETUNE_TEST_REDIS_DB", "7"))
    url = f"redis://127.0.0.1:6379/{index}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at 127.0.0.1:6379 is required: {exc}")
    yield url
    client.flushdb()


# Folders whose tests start live processes (`finetune serve`, workers, a browser) or train
# real backbones: each takes seconds to minutes. `pytest -m "not slow"` leaves them out
# and gives the fast suite (engine units, the store, the API in-process) in under a
# minute; a single test elsewhere can still say `@pytest.mark.slow` itself.
SLOW_FOLDERS = {"e2e", "reliability", "worker", "client", "web", "webhooks"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
