from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

Task = Literal["image_classification", "text_classification", "tabular_classification"]


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
    created_at: datetime
