"""Errors and their one JSON shape: {"error": {"code", "message", "field"?}}.

`ApiError` is the API's own error; errors raised below the routes (the engine's
EngineError, ingestion's IngestError) carry the same `code`, `message` and, when there is
one, `field`, and are mapped in the one table passed to `install_error_handlers` (see
app.main). No route or service translates one error into another by hand.
"""

import errno
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("finetune.errors")


class ApiError(Exception):
    """An error a client caused or can act on; `status` is the HTTP status it maps to."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field  # the request field at fault, when there is one
        if code:
            self.code = code
        if status:
            self.status = status


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class Invalid(ApiError):
    status = 422
    code = "invalid"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception's chain (torch.save wraps it in a
    RuntimeError; SQLite says "database or disk is full")."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "database or disk is full" in text:
            return True
    return False


DISK_FULL_MESSAGE = "no space left on the data dir's disk; free some space and try again"


DATABASE_DOWN_MESSAGE = "the database is unavailable (down, paused or unreachable); retry shortly"
_INTERNAL = "internal server error (a bug; see the server log)"


def is_database_outage(exc: BaseException) -> bool:
    """The database cannot be reached or answered too late (not a bad statement)."""
    if isinstance(exc, SQLAlchemyTimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError) and not is_disk_full(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _disk_full(request: Request, exc: BaseException) -> JSONResponse:
    log.error("disk full on %s: %s", request.url.path, _first_line(exc))
    return JSONResponse(error_body("disk_full", DISK_FULL_MESSAGE), 507)


def error_body(code: str, message: str, field: str | None = None) -> dict:
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


@contextmanager
def in_field(field: str) -> Iterator[None]:
    """An error (ApiError, EngineError, ...) raised inside is about request field
    `field`: it is named in the error's `field` and its message, unless it names one."""
    try:
        yield
    except Exception as exc:
        if hasattr(exc, "message") and getattr(exc, "field", None) is None:
            exc.field = field
            exc.message = f"{field}: {exc.message}"
        raise


class ErrorRule:
    """How the handler renders an error type raised below the routes: the status when
    the error carries none, and the field when it names none."""

    def __init__(self, status: int, field: str | None = None):
        self.status, self.field = status, field


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI, errors: Mapping[type[Exception], ErrorRule]) -> None:
    """Every handler, registered once. `errors`: the error types raised below the routes
    (each with `code` and `message`, and maybe `status` and `field`), with their rule."""
    rules = {ApiError: ErrorRule(ApiError.status), **errors}

    async def _error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ApiError) and is_disk_full(exc):  # a write failed, not the input
            return _disk_full(request, exc)
        rule = next(r for t, r in rules.items() if isinstance(exc, t))
        status = getattr(exc, "status", None) or rule.status
        field = getattr(exc, "field", None) or rule.field
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        body = error_body(exc.code, exc.message, field)
        return JSONResponse(body, status, headers=headers)

    for error_type in rules:
        app.add_exception_handler(error_type, _error)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        message = "; ".join(f"{_loc(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5])
        field = _loc(tuple(first.get("loc", ())))
        body = error_body(
            "validation_error", message or str(first), None if field == "request" else field
        )
        body["error"]["fields"] = [
            {"field": _loc(tuple(e.get("loc", ()))), "message": e.get("msg")} for e in errors
        ]
        return JSONResponse(body, 422)

    # Infrastructure faults: the client can only retry later, so 503/507 with one log
    # line, not a 500 and a traceback (and the keep-alive connection survives).
    @app.exception_handler(DBAPIError)
    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if is_disk_full(exc):
            return _disk_full(request, exc)
        if not is_database_outage(exc):
            log.error("database error on %s", request.url.path, exc_info=exc)
            return JSONResponse(error_body("internal_error", _INTERNAL), 500)
        log.warning("database unavailable on %s: %s", request.url.path, _first_line(exc))
        return JSONResponse(
            error_body("database_unavailable", DATABASE_DOWN_MESSAGE),
            503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if is_disk_full(exc):
            return _disk_full(request, exc)
        log.error("I/O error on %s", request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal_error", _INTERNAL), 500)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug. Starlette re-raises after this response, so the traceback still reaches
        # the log; the client gets the one error shape, and no internals.
        if is_disk_full(exc):  # wrapped by a library, say
            return JSONResponse(error_body("disk_full", DISK_FULL_MESSAGE), 507)
        return JSONResponse(error_body("internal_error", _INTERNAL), 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {
            400: "bad_request",  # a body that cannot be parsed (bad JSON bytes, bad multipart)
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )
