"""ASGI middleware: request-size and header-size limits (before any body is read), NUL in
the path. (The request metrics are app.ops.metrics.)"""

import json

from app.core.errors import error_body


async def _send_413(send, limit: int) -> None:
    body = json.dumps(
        error_body("upload_too_large", f"request body is larger than the limit of {limit} bytes")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `limit` bytes: by Content-Length up front, else while streaming."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_413(send, self.limit)
        seen = 0
        refused = False

        async def counting_receive():
            # Past the limit: answer 413 ourselves and tell the app the client went away,
            # so it stops reading; whatever it answers after that is dropped.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await _send_413(send, self.limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)


class RefuseNulPath:
    """A path with a NUL byte (%00) names nothing; refuse it before any route looks it up
    (PostgreSQL cannot even compare text that holds one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "\x00" not in scope["path"]:
            return await self.app(scope, receive, send)
        body = json.dumps(
            error_body("bad_request", "the request path contains a NUL (0x00) character")
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class HeaderLimit:
    """Refuse requests whose headers add up to more than `limit` bytes with a 431 (the
    HTTP parser accepts any size; nothing downstream needs more than a few KiB)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size <= self.limit:
            return await self.app(scope, receive, send)
        body = json.dumps(
            error_body(
                "headers_too_large",
                f"the request headers add up to {size} bytes, over the limit of {self.limit}",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
