"""Dependencies declared once as Annotated aliases and reused by every route."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.models import Owner
from app.auth.service import KeyCache, authenticate
from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.core.errors import NotFound


async def get_session() -> AsyncIterator[Session]:
    # An async generator on purpose: its exit (closing the session, which ends the
    # transaction) then runs on the event loop. A sync generator's exit needs a free
    # threadpool thread, and under load every thread can be waiting for the SQLite write
    # lock that this very session holds: a convoy that lasts until busy_timeout.
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


# scope="function": the session closes once the response is serialised, before it is
# sent, so a slow client reading its response holds no transaction (on SQLite a write
# transaction blocks every other writer). Sync routes end their read transaction even
# earlier, when they return (app.core.routing.Route).
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
# Offsets and cursors are bounded by what every backend's integers hold: a larger one
# would overflow the driver (a 500), so it is a 422 that names the parameter instead.
MAX_OFFSET = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _authenticate(secret: str | None) -> Owner:
    # Its own short session: the route's session is not opened for authentication, and
    # the returned Owner (expire_on_commit=False) stays readable after it closes.
    with get_sessionmaker()() as session:
        return authenticate(session=session, secret=secret)


async def current_owner(request: Request) -> Owner:
    secret = _bearer(request)
    keys: KeyCache = request.app.state.keys
    owner = keys.get(secret) if secret else None
    if owner is None:  # not seen lately: ask the database, off the event loop
        owner = await run_in_threadpool(_authenticate, secret)
        keys.put(secret, owner)
    request.state.owner_id = owner.id
    return owner


CurrentOwner = Annotated[Owner, Depends(current_owner)]


async def admin_owner(owner: CurrentOwner) -> Owner:
    # 404, not 403: the admin surface does not exist for other owners.
    if not owner.is_admin:
        raise NotFound("not found")
    return owner


AdminOwner = Annotated[Owner, Depends(admin_owner)]
