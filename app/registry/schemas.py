from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str
    dataset_id: str
    base_model: str
    task: str
    classes: list[str]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    created_at: datetime


class BaseModelOut(BaseModel):
    name: str
    task: str
    params: int
    weights_present: bool
    description: str = ""
    default_image_size: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
