"""The lean predict path's multipart split against real encoders' bodies: the same
files and top_k as Starlette's parser reads, and None (hand it to the route) for any form
it does not recognise."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.requests import Request

from app.predictions.fastpath import parse_multipart


def _encoded(**kwargs) -> tuple[bytes, bytes]:
    request = httpx.Request("POST", "http://x/v1/models/m/predict", **kwargs)
    return request.read(), request.headers["content-type"].encode()


def _starlette_form(body: bytes, ctype: bytes):
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", ctype)]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def read():
        form = await Request(scope, receive).form()
        files = [(f.filename, await f.read()) for f in form.getlist("files")]
        return files, form.get("top_k")

    return asyncio.run(read())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"files": [("files", ("a.png", b"\x89PNG\r\n--\r\n\r\nbinary"))]},
        {"files": [("files", ("a.png", b"x" * 5000)), ("files", ("b.jpg", b""))]},
        {"files": [("files", ("ünï code.png", b"data"))], "data": {"top_k": "3"}},
    ],
)
def test_plain_forms_split_as_starlette_parses_them(kwargs):
    body, ctype = _encoded(**kwargs)
    parsed = parse_multipart(body, ctype)
    assert parsed is not None
    files, top_k = parsed
    expected_files, expected_top_k = _starlette_form(body, ctype)
    assert files == expected_files
    assert (top_k.decode() if top_k is not None else None) == expected_top_k


@pytest.mark.parametrize(
    "kwargs",
    [
        {"files": [("other", ("a.png", b"x"))]},  # not 'files'
        {"files": [("files", ("a.png", b"x"))], "data": {"extra": "1"}},  # another field
        {"data": {"files": "not a file"}},  # files as a plain field
        {"files": [("files", (f"{i}.png", b"x")) for i in range(65)]},  # over MAX_FILES
    ],
)
def test_anything_else_is_left_to_the_route(kwargs):
    body, ctype = _encoded(**kwargs)
    assert parse_multipart(body, ctype) is None


def test_truncated_or_unbounded_bodies_are_left_to_the_route():
    body, ctype = _encoded(files=[("files", ("a.png", b"data"))])
    assert parse_multipart(body[: len(body) // 2], ctype) is None
    assert parse_multipart(body, b"multipart/form-data") is None
