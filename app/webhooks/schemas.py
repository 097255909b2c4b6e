from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import NoNul

EventType = Literal["job.succeeded", "job.failed", "job.cancelled", "job.epoch"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, NoNul] = Field(min_length=1, max_length=2000, description="http(s) URL")
    events: list[EventType] = Field(
        default=["job.succeeded", "job.failed", "job.cancelled"], min_length=1, max_length=4
    )


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_… signing secret; shown once")


class DeliveryAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_status_code: int | None
    next_attempt_at: datetime | None
    log: list[DeliveryAttempt]
    created_at: datetime
    finished_at: datetime | None
