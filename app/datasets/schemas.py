from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# The engine's tasks (app/training/tasks.py TaskName): <modality>_<kind>.
Task = Literal[
    "image_classification",
    "image_multilabel",
    "image_regression",
    "text_classification",
    "text_multilabel",
    "text_regression",
    "tabular_classification",
    "tabular_multilabel",
    "tabular_regression",
]


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    task: str
    status: str
    num_samples: int
    classes: list[str]
    class_counts: dict[str, int]
    splits: dict[str, int]
    # regression: {count, mean, std, min, max}; multi-label: {label_counts, label_set_sizes}
    targets: dict[str, Any] | None = None
    created_at: datetime
