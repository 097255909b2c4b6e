"""/v1/base-models: the built-in base models, and the weights an owner uploads."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from app.auth.deps import CurrentOwner
from app.core.deps import SessionDep
from app.core.routing import Route
from app.core.schemas import NoNul
from app.registry import base_models
from app.registry.schemas import BaseModelOut
from app.storage.deps import StorageDep

router = APIRouter(prefix="/v1/base-models", tags=["base-models"], route_class=Route)


@router.get("", response_model=list[BaseModelOut])
def list_base_models(owner: CurrentOwner, session: SessionDep):
    """Built-in base models (text and tabular too), then this owner's uploaded weights."""
    return base_models.list_all(session=session, owner=owner)


@router.post("", response_model=BaseModelOut, status_code=status.HTTP_201_CREATED)
def upload_base_model(
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    file: Annotated[UploadFile, File(description="a .safetensors state dict")],
    architecture: Annotated[str, Form(min_length=1, max_length=64), NoNul],
    name: Annotated[str | None, Form(max_length=200), NoNul] = None,
):
    """Pretrained weights for a known architecture, as safetensors (a pickle is refused
    unread). Usable by this owner as `"base_model": "upload:<id>"`."""
    row = base_models.create_upload(
        session=session,
        owner=owner,
        storage=storage,
        upload=file.file,
        architecture=architecture.strip(),
        name=name or file.filename or architecture,
    )
    return base_models.upload_out(row)
