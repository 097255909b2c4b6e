"""Trained models: read and list, owner-scoped."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import Owner
from app.core.errors import NotFound
from app.core.pagination import fetch_page
from app.registry.models import Model


def get(*, session: Session, owner: Owner, model_id: str) -> Model:
    model = session.get(Model, model_id)
    if model is None or model.owner_id != owner.id:
        raise NotFound(f"model {model_id!r} not found")
    return model


def find(*, session: Session, model_id: str) -> Model | None:
    """The model's row whoever owns it (predict checks the owner against its cache)."""
    return session.get(Model, model_id)


def list_(*, session: Session, owner: Owner, limit: int, offset: int) -> tuple[list[Model], int]:
    query = select(Model).where(Model.owner_id == owner.id)
    return fetch_page(session=session, query=query, entity=Model, limit=limit, offset=offset)
