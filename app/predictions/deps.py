"""The model cache as a dependency: routes ask for it, not for `request.app.state`."""

from typing import Annotated

from fastapi import Depends, Request

from app.predictions.service import ModelCache


def get_model_cache(request: Request) -> ModelCache:
    """The app's one cache of loaded models (made in app.main's lifespan)."""
    return request.app.state.models


ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
