from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field

from app.auth import service
from app.auth.deps import AdminOwner
from app.core.deps import SessionDep
from app.core.routing import Route
from app.core.schemas import NoNul

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=Route)


class KeyCreate(BaseModel):
    name: Annotated[str, NoNul] = Field(
        min_length=1, max_length=200, description="the new owner's name"
    )


class KeyOut(BaseModel):
    id: str
    owner_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret; shown once, never stored")


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, _: AdminOwner, session: SessionDep):
    """A new owner with its own key; it sees only its own datasets, jobs and models."""
    owner, key, secret = service.create_owner_key(session=session, name=body.name)
    return KeyCreated(
        id=key.id, owner_id=owner.id, name=key.name, created_at=key.created_at, key=secret
    )


@router.get("/keys", response_model=list[KeyOut])
def list_keys(_: AdminOwner, session: SessionDep):
    return [
        KeyOut.model_validate(k, from_attributes=True) for k in service.list_keys(session=session)
    ]


@router.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, request: Request, _: AdminOwner, session: SessionDep):
    key = service.revoke_key(session=session, key_id=key_id)
    request.app.state.keys.clear()  # this process stops trusting it now, not in ttl seconds
    return KeyOut.model_validate(key, from_attributes=True)
