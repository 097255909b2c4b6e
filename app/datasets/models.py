from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, utcnow


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_datasets_owner_idempotency"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="ready")
    num_samples: Mapped[int] = mapped_column(default=0)
    classes: Mapped[list] = mapped_column(default=list)
    class_counts: Mapped[dict] = mapped_column(default=dict)
    splits: Mapped[dict] = mapped_column(default=dict)
    # Column names and feature types for CSV datasets.
    meta: Mapped[dict] = mapped_column(default=dict)
    # A retried upload with the same Idempotency-Key and bytes gets this dataset back.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def targets(self) -> dict | None:
        """The target summary of a regression or multi-label dataset (targets.py)."""
        return (self.meta or {}).get("targets")
