"""Dependencies declared once as Annotated aliases and reused by every route."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from app.auth.models import Owner
from app.auth.service import authenticate
from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.core.errors import NotFound


def get_session() -> Iterator[Session]:
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
# Offsets and cursors are bounded by what every backend's integers hold: a larger one
# would overflow the driver (a 500), so it is a 422 that names the parameter instead.
MAX_OFFSET = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def current_owner(request: Request, session: SessionDep) -> Owner:
    owner = authenticate(session=session, secret=_bearer(request))
    # End the read transaction now: on SQLite every transaction holds the write lock
    # (BEGIN IMMEDIATE), and the route may do slow work (an upload) before its next query.
    session.commit()
    request.state.owner_id = owner.id
    return owner


CurrentOwner = Annotated[Owner, Depends(current_owner)]


def admin_owner(owner: CurrentOwner) -> Owner:
    # 404, not 403: the admin surface does not exist for other owners.
    if not owner.is_admin:
        raise NotFound("not found")
    return owner


AdminOwner = Annotated[Owner, Depends(admin_owner)]
