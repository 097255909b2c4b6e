"""A predict request's inputs, checked and prepared before they are batched: the form's
`top_k`, the pixel budget, decoding, the JSON body of text and tabular models.

Pure functions of bytes and parsed values, shared by the route (app.predictions.router)
and the lean path below it (app.predictions.fastpath), so both judge a request alike.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from PIL import Image

from app.core.errors import ApiError, Invalid
from app.predictions.errors import BodyTooLarge, TooManyPixels, UnsupportedMediaType
from app.training.errors import EngineError
from app.training.inference import decode_image
from app.training.tasks import Modality, get_task

MAX_FILES = 64
MAX_INPUTS = 256  # per JSON predict request (text, tabular)
MAX_JSON_BYTES = 4 * 1024 * 1024

# Pixels one predict request may decode, summed over its files. The header declares them
# before anything is decoded, and a few KB of PNG can declare 64 Mpx (~250 MB decoded):
# without a bound, one small request could take the server's memory. 48 Mpx still fits a
# 48 MP photo, or hundreds of ordinary images.
MAX_PIXELS = 48_000_000

# About one 512 x 512 image: decoding it costs less than a thread hand-off under load.
INLINE_DECODE_PIXELS = 512 * 512


def declared_pixels(data: bytes) -> int:
    """Width x height from the image header; 0 if there is none (decoding says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.width * im.height
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return 0


class Upload(NamedTuple):
    """One image file of a request: its name and its bytes."""

    filename: str | None
    data: bytes


def pixel_budget(files: list[Upload]) -> int:
    """The pixels the files declare in all, or 413 at the first file past MAX_PIXELS."""
    pixels = 0
    for f in files:
        pixels += declared_pixels(f.data)
        if pixels > MAX_PIXELS:
            raise TooManyPixels(
                f"files: the images declare {pixels} pixels up to {f.filename!r}; one "
                f"predict request decodes at most {MAX_PIXELS} (send fewer or smaller images)",
                field="files",
            )
    return pixels


# Decoding and resizing release the GIL (Pillow's codecs and resampling), so the files of
# one request are prepared on every core at once rather than one after another, when
# they are large enough to pay for the hand-offs (16 PNGs at 224 px, 200 KB: 10.5 ms one
# after another, 7 ms side by side; 16 at 64 px, 25 KB, decode faster than they hand off).
# Compressed bytes stand in for pixels: they cost nothing to count.
_PREPARERS = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="decode")
PARALLEL_MIN_BYTES = 128 * 1024


def prepared_images(predictor, files: list[Upload]) -> list:
    """The files decoded and resized to the model's size (predictor.check), or a 422
    naming the first file, in order, that is not a readable image."""
    size = getattr(predictor, "image_size", None)

    def prepared(f: Upload):
        try:
            image = decode_image(f.data, size)
        except EngineError as exc:
            exc.field, exc.message = "files", f"files: {f.filename!r}: {exc.message}"
            raise
        return predictor.check([image])[0]

    if len(files) < 2 or sum(len(f.data) for f in files) < PARALLEL_MIN_BYTES:
        return [prepared(f) for f in files]
    return list(_PREPARERS.map(prepared, files))


def top_k(value, n_classes: int) -> int:
    """A positive whole number (a JSON integer, an integral float, or a form string of
    digits), clipped to the class count; anything else, Infinity and 1e400 included, is
    a 422 naming top_k."""
    bad = Invalid("top_k: must be a positive integer", code="validation_error", field="top_k")
    if value is None or value == "":
        return 1
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise bad
        # A long digit string is a huge k (clipped below); int() of it would be slow.
        k = int(text) if len(text) <= 12 else n_classes + 1
    elif isinstance(value, int):
        k = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        k = int(value)
    else:
        raise bad
    if k < 1:
        raise bad
    return min(k, n_classes)


def require_multipart(content_type: str) -> None:
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "an image model takes multipart/form-data with one or more 'files'"
        )


def _kind(task: str) -> str:
    return "strings" if get_task(task).modality == Modality.TEXT else "objects {column: value}"


def require_json(content_type: str, task: str) -> None:
    if not content_type.startswith("application/json"):
        raise UnsupportedMediaType(
            f'a {task} model takes application/json {{"inputs": [{_kind(task)}]}}'
        )


def json_body(raw: bytes, task: str) -> dict:
    """{"inputs": [...], "top_k"?} of a text or tabular predict request, or a 4xx."""
    kind = _kind(task)
    if len(raw) > MAX_JSON_BYTES:
        raise BodyTooLarge(f"body over {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise Invalid(
            "inputs: JSON nested too deeply (a predict input is a string or a flat object)",
            code="validation_error",
            field="inputs",
        ) from None
    except ValueError as exc:
        raise ApiError(f"body is not valid JSON: {exc}", code="bad_request") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise Invalid(
            f'inputs: send {{"inputs": [{kind}]}}', code="validation_error", field="inputs"
        )
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise Invalid(
            f"inputs: a non-empty list of {kind}", code="validation_error", field="inputs"
        )
    if len(inputs) > MAX_INPUTS:
        raise Invalid(
            f"inputs: {len(inputs)} inputs; at most {MAX_INPUTS} per request",
            code="too_many_inputs",
            field="inputs",
        )
    return body
