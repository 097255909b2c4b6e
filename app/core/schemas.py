from typing import Generic, TypeVar

from pydantic import AfterValidator, BaseModel

T = TypeVar("T")


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL (0x00) characters")
    return value


# Text a client sends that the database will store or compare: PostgreSQL refuses NUL in
# text, so it is a 422 naming the field here rather than a driver error (a 500) later.
NoNul = AfterValidator(_no_nul)


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_offset: int | None = None
    total: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None  # the request field at fault, when there is one


class ErrorResponse(BaseModel):
    error: ErrorDetail
