"""Dependencies declared once as Annotated aliases and reused by every route."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from app.core.config import Settings, get_settings
from app.core.db import get_sessionmaker
from app.core.pagination import page_body


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


@dataclass(frozen=True)
class PageQuery:
    """One page of a list endpoint: `limit` rows from `offset` (newest first)."""

    limit: int
    offset: int

    def body(self, rows: list, total: int) -> dict:
        return page_body(rows, total, self.offset)


def page_query(limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Offset = 0) -> PageQuery:
    return PageQuery(limit=limit, offset=offset)


# The `limit` and `offset` query parameters of every list endpoint.
PageParams = Annotated[PageQuery, Depends(page_query)]
