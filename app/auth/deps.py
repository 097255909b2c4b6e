"""Who is calling: the bearer key's owner, and the admin-only surface, as dependencies."""

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app.auth.models import Owner
from app.auth.service import KeyCache, authenticate
from app.core.db import get_sessionmaker
from app.core.errors import NotFound


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
