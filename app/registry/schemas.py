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


class TopK(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    """A classification's answer (the best class, its score, the top_k)."""

    label: str
    score: float
    top_k: list[TopK]


class LabelsPrediction(BaseModel):
    """A multi-label answer: the labels over their thresholds, the top_k by score."""

    labels: list[str]
    top_k: list[TopK]


class ValuePrediction(BaseModel):
    """A regression's answer."""

    value: float


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[Prediction | LabelsPrediction | ValuePrediction]


class BaseModelOut(BaseModel):
    name: str
    task: str
    params: int
    weights_present: bool
    description: str = ""
    default_image_size: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
