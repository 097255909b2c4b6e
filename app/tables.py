"""Imports every table so Base.metadata is complete (Alembic, tests)."""

from app.auth.models import ApiKey, Owner
from app.core.db import Base
from app.datasets.models import Dataset
from app.jobs.models import Job, JobEvent
from app.registry.models import Model, UploadedBaseModel
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = ["ApiKey", "Base", "Dataset", "Job", "JobEvent", "Model", "Owner", "UploadedBaseModel"]
__all__ += ["WebhookDelivery", "WebhookEndpoint", "WebhookEvent"]
