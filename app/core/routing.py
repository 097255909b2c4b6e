"""The route class every router uses: a sync endpoint's read transaction ends when it
returns.

FastAPI closes a function-scoped dependency (our session) only after it has validated
the response, and for a sync endpoint it validates in a threadpool thread. A session
still in its transaction keeps its pooled connection through that wait. Under load
that deadlocked: every threadpool thread waiting for a connection, every connection
held by a request waiting for a thread (80 pollers: stalls of 30 s, then 500s when the
pool timed out). Ending the transaction on return gives the connection back at once;
expire_on_commit=False keeps the returned rows readable for serialisation.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from app.core.db import WRITE_OPTION


def _end_read_transactions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the signature through __wrapped__
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = endpoint(*args, **kwargs)
        for value in kwargs.values():
            if isinstance(value, Session) and value.in_transaction():
                write = value.connection().get_execution_options().get(WRITE_OPTION, False)
                if not write:  # an unfinished write is left to close(), which rolls back
                    value.commit()
        return result

    return wrapper


class Route(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _end_read_transactions(endpoint)
        super().__init__(path, endpoint, **kwargs)
