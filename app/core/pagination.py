"""Offset pagination shared by every list endpoint: newest first, stable ties by id."""

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session


def fetch_page(
    *, session: Session, query: Select, entity: Any, limit: int, offset: int
) -> tuple[list, int]:
    """(rows of this page, total rows) of `query`, ordered by created_at desc, id."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(entity.created_at.desc(), entity.id).limit(limit).offset(offset)
    )
    return list(rows), total


def page_body(rows: list, total: int, offset: int) -> dict:
    """The Page response: items, total, and the offset of the next page (None at the end)."""
    following = offset + len(rows)
    return {"items": rows, "total": total, "next_offset": following if following < total else None}
