from pydantic import BaseModel


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
