"""The base models jobs can start from, as the API sees them (the engine owns the list)."""

from app.core.errors import Invalid
from app.training import build
from app.training.errors import EngineError


def list_all() -> list[dict]:
    return build.list_base_models()


def check(*, name: str, pretrained: bool) -> dict:
    """The base model's description, or a 422 saying why a job can't start from it."""
    try:
        build.check_available(name, pretrained)
    except EngineError as exc:
        raise Invalid(f"base_model: {exc.message}", code=exc.code) from exc
    return next(m for m in list_all() if m["name"] == name)
