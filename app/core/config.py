"""One settings object for the API, the worker and the CLI, read from FINETUNE_* variables."""

from functools import lru_cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FINETUNE_", extra="ignore")

    data_dir: Path = Path("./var")
    # Empty means the embedded SQLite file under data_dir.
    database_url: str = ""
    # Empty means the embedded broker: kombu's filesystem transport under data_dir.
    broker_url: str = ""
    api_key: str | None = None
    # When set, /metrics needs "Authorization: Bearer <this>" (it aggregates all owners).
    metrics_token: str | None = None

    max_upload_bytes: int = 2 * 1024**3
    max_header_bytes: int = 32 * 1024  # all request headers together; beyond, a 431
    # A tabular dataset's one-hot encoded width, and a tabular model's parameter count:
    # refused (422) at upload and at job creation beyond these.
    max_tabular_width: int = 10_000
    max_model_params: int = 50_000_000
    # A job whose worker stopped heart-beating for this long is handed to another worker.
    lease_seconds: int = 60
    heartbeat_seconds: int = 10
    max_attempts: int = 3
    # How often the API re-queues jobs whose message was lost or whose lease expired.
    reconcile_seconds: int = 15
    # How long a finished job's scratch (var/jobs/<id>: checkpoints) is kept (0: removed
    # as the job ends); the reconciler sweeps what is older, and what a crash left.
    job_scratch_retention_seconds: int = 0
    # PostgreSQL: a connection attempt, and one statement, give up after these (so a
    # database that is down or paused answers 503 in seconds instead of hanging).
    db_connect_timeout_seconds: int = 5
    db_statement_timeout_seconds: int = 30
    # /readyz waits at most this long for each of its checks.
    ready_timeout_seconds: float = 3.0
    predict_max_batch: int = 16
    model_cache_size: int = 4
    # A key that authenticated is trusted this long without a database read; a key
    # revoked by the CLI or another API process stops working within it (0: read always).
    auth_cache_seconds: float = 5.0
    # Webhooks: the service calls only public addresses unless this is true (tests, a LAN).
    webhook_allow_private: bool = False
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 10.0  # before the first retry; doubles each time
    webhook_backoff_max_seconds: float = 3600.0
    webhook_timeout_seconds: float = 10.0
    webhook_poll_seconds: float = 1.0
    torch_threads: int = 0  # 0: leave torch's default
    log_level: str = "INFO"

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'finetune.db'}"

    @property
    def celery_broker_url(self) -> str:
        # The embedded broker: kombu's filesystem transport, hardened (app/jobs/fsbroker.py).
        return self.broker_url or "finetunefs://"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def workers_dir(self) -> Path:
        """Worker heartbeat files (see app.ops.supervisor)."""
        return self.data_dir / "workers"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def ensure_dirs(self) -> None:
        for d in (
            self.data_dir,
            self.broker_dir,
            self.datasets_dir,
            self.jobs_dir,
            self.models_dir,
            self.cache_dir,
            self.workers_dir,
            self.data_dir / "uploads",
        ):
            d.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
