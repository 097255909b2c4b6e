from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.schemas import NoNul

Strategy = Literal["full", "partial", "layerwise", "progressive", "auto"]


class JobSpec(BaseModel):
    """What to fine-tune and how. Unknown fields are refused so a typo is not ignored."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: Annotated[str, NoNul] = Field(min_length=1, max_length=64)
    base_model: Annotated[str, NoNul] = Field(
        min_length=1, max_length=200, description="a name from GET /v1/base-models, or model:<id>"
    )
    pretrained: bool = True
    strategy: Strategy | None = Field(
        None,
        description="null: chosen from the base model (partial, i.e. the exact linear probe, "
        "for pretrained weights; full for random ones); the chosen one is stored",
    )
    trainable_blocks: int = Field(0, ge=0, le=64)
    unfreeze_every: int = Field(1, ge=1, le=1000)
    epochs: int | None = Field(
        None, ge=1, le=1000, description="null: chosen from the dataset size (a floor of steps)"
    )
    learning_rate: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0, le=1)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    val_fraction: float = Field(0.15, gt=0, lt=0.9)
    early_stopping_patience: int | None = Field(5, ge=1, le=1000)
    image_size: int = Field(224, ge=16, le=1024)
    augment: bool = False
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["auto"] | None = None
    lr_decay: float = Field(0.5, gt=0, le=1, description="per-block rate factor (progressive)")
    auto_budget_epochs: int = Field(12, ge=1, le=1000, description="search budget (auto)")
    auto_budget_seconds: float | None = Field(
        None, gt=0, le=7 * 24 * 3600, description="search budget in seconds (auto)"
    )
    refit: bool = Field(
        True,
        description="a head-only job: once validation chose the L2 strength, refit the head "
        "on train + validation (validation metrics stay those of the head it chose)",
    )
    probe: bool = Field(
        True,
        description="fit the head exactly first (L-BFGS logistic regression on the frozen "
        "features): the whole job when only the head trains, the start of any fine-tune",
    )
    max_length: int = Field(
        128, ge=8, le=512, description="text: tokens per input; longer texts are truncated"
    )
    loss: Literal["mse", "huber"] | None = Field(
        None, description="regression: mean squared error (null, the default) or Huber"
    )

    @field_validator("base_model")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()


class Progress(BaseModel):
    epoch: int = 0
    epochs: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None


class JobError(BaseModel):
    code: str
    message: str
    field: str | None = None  # the job spec's field at fault, when there is one


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]] | None = None
    model_id: str | None
    error: JobError | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime
