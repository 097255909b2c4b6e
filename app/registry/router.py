import asyncio
import io
import json
import math
import warnings
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.auth.deps import CurrentOwner
from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.core.deps import PageParams, SessionDep, SettingsDep
from app.core.errors import ApiError, Invalid, NotFound
from app.core.routing import Route
from app.core.schemas import ErrorResponse, Page
from app.jobs.models import Job
from app.predictions.service import Batcher, ModelCache, ModelInfo
from app.registry import report, service
from app.registry.models import Model
from app.registry.schemas import ModelOut, PredictResponse
from app.storage.deps import StorageDep
from app.storage.local import LocalStorage
from app.training.errors import EngineError
from app.training.export import export
from app.training.inference import decode_image
from app.training.tasks import Modality, get_task

router = APIRouter(tags=["models"], route_class=Route)

MAX_FILES = 64
MAX_INPUTS = 256  # per JSON predict request (text, tabular)
MAX_JSON_BYTES = 4 * 1024 * 1024
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "array"},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                }
            },
        },
    }
}


@router.get("/v1/models", response_model=Page[ModelOut])
def list_models(
    owner: CurrentOwner,
    session: SessionDep,
    page: PageParams,
):
    rows, total = service.list_(session=session, owner=owner, limit=page.limit, offset=page.offset)
    return page.body(rows, total)


@router.get("/v1/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, owner: CurrentOwner, session: SessionDep):
    return service.get(session=session, owner=owner, model_id=model_id)


# Pixels one predict request may decode, summed over its files. The header declares them
# before anything is decoded, and a few KB of PNG can declare 64 Mpx (~250 MB decoded):
# without a bound, one small request could take the server's memory. 48 Mpx still fits a
# 48 MP photo, or hundreds of ordinary images.
MAX_PIXELS = 48_000_000


def _declared_pixels(data: bytes) -> int:
    """Width x height from the image header; 0 if there is none (decode_image says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.width * im.height
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return 0


def _decode_all(blobs: list[tuple[str | None, bytes]], size: int | None = None) -> list:
    images = []
    for filename, data in blobs:
        try:
            images.append(decode_image(data, size))
        except EngineError as exc:
            raise Invalid(f"files: {filename!r}: {exc.message}", code=exc.code) from exc
    return images


def _top_k(value, n_classes: int) -> int:
    """A positive whole number (a JSON integer, an integral float, or a form string of
    digits); anything else, Infinity and 1e400 included, is a 422 naming top_k."""
    bad = Invalid("top_k: must be a positive integer", code="validation_error")
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


@router.post(
    "/v1/models/{model_id}/predict",
    response_model=PredictResponse,
    openapi_extra=PREDICT_BODY,
    responses={415: {"model": ErrorResponse, "description": "wrong content type for the model"}},
)
async def predict(model_id: str, request: Request, owner: CurrentOwner, settings: SettingsDep):
    # The hot path reads no database once the model is cached (app.predictions.service).
    models: ModelCache = request.app.state.models
    info = models.info(model_id) or await run_in_threadpool(_read_model_info, models, model_id)
    if info is None or info.owner_id != owner.id:
        raise NotFound(f"model {model_id!r} not found")
    content_type = request.headers.get("content-type", "")
    image = get_task(info.task).modality == Modality.IMAGE
    body = None
    # The content type is checked before a first request loads the model.
    if not image:
        body = await _json_body(request, content_type, info.task)
    elif not content_type.startswith("multipart/form-data"):
        raise ApiError(
            "an image model takes multipart/form-data with one or more 'files'",
            code="unsupported_media_type",
            status=415,
        )
    batcher = await _batcher(models, settings, info.id)
    with batcher.arrival() as arrival:
        if body is None:
            inputs, top_k = await _image_inputs(request, batcher.predictor, len(info.classes))
        else:
            top_k = _top_k(body.get("top_k"), len(info.classes))
            inputs = _checked(batcher.predictor, body["inputs"])
        try:
            predictions = await batcher.submit(inputs, top_k, arrival)
        except EngineError as exc:  # e.g. a non-finite output: never a NaN in a response
            raise Invalid(exc.message, code=exc.code) from exc
    return {"model_id": info.id, "predictions": predictions}


async def _image_inputs(request: Request, predictor, n_classes: int) -> tuple[list, int]:
    """The request's images, decoded and prepared at the model's size, and its top_k."""
    form = await request.form(max_files=MAX_FILES, max_fields=8)
    files = form.getlist("files")
    if not files or any(isinstance(f, str) for f in files):
        raise Invalid("files: send one or more image files as 'files'", code="missing_files")
    top_k = _top_k(form.get("top_k"), n_classes)
    pixels = 0
    blobs = []
    for f in files:
        data = await f.read()
        pixels += _declared_pixels(data)
        if pixels > MAX_PIXELS:
            raise ApiError(
                f"files: the images declare {pixels} pixels up to {f.filename!r}; one "
                f"predict request decodes at most {MAX_PIXELS} (send fewer or smaller images)",
                code="too_many_pixels",
                status=413,
            )
        blobs.append((f.filename, data))
    # Decoding is CPU work: off the event loop, unless it is too little to be worth the
    # hand-off to a thread.
    if pixels <= INLINE_DECODE_PIXELS:
        return _prepared(predictor, blobs), top_k
    return await asyncio.to_thread(_prepared, predictor, blobs), top_k


def _prepared(predictor, blobs: list[tuple[str | None, bytes]]) -> list:
    """Decoded, then resized to the model's size (predictor.check)."""
    return _checked(predictor, _decode_all(blobs, getattr(predictor, "image_size", None)))


def _checked(predictor, inputs: list) -> list:
    try:
        return predictor.check(inputs)
    except EngineError as exc:
        raise Invalid(exc.message, code=exc.code) from exc


# About one 512 x 512 image: decoding it costs less than a thread hand-off under load.
INLINE_DECODE_PIXELS = 512 * 512


def _read_model_info(models: ModelCache, model_id: str) -> ModelInfo | None:
    with get_sessionmaker()() as session:
        model = session.get(Model, model_id)
        if model is None:
            return None
        return models.remember(
            ModelInfo(
                id=model.id, owner_id=model.owner_id, task=model.task, classes=tuple(model.classes)
            )
        )


async def _batcher(models: ModelCache, settings: Settings, model_id: str) -> Batcher:
    """The cached model's batcher; a first load (seconds of CPU) runs off the event loop."""
    return models.peek(model_id) or await models.aget(
        model_id, LocalStorage(settings).model_dir(model_id)
    )


async def _json_body(request: Request, content_type: str, task: str) -> dict:
    """{"inputs": [...], "top_k"?} of a text or tabular predict request, or a 4xx."""
    kind = "strings" if get_task(task).modality == Modality.TEXT else "objects {column: value}"
    if not content_type.startswith("application/json"):
        raise ApiError(
            f'a {task} model takes application/json {{"inputs": [{kind}]}}',
            code="unsupported_media_type",
            status=415,
        )
    raw = await request.body()
    if len(raw) > MAX_JSON_BYTES:
        raise ApiError(f"body over {MAX_JSON_BYTES} bytes", code="payload_too_large", status=413)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise Invalid(
            "inputs: JSON nested too deeply (a predict input is a string or a flat object)",
            code="validation_error",
        ) from None
    except ValueError as exc:
        raise ApiError(f"body is not valid JSON: {exc}", code="bad_request") from None
    if not isinstance(body, dict) or "inputs" not in body:
        raise Invalid(f'inputs: send {{"inputs": [{kind}]}}', code="validation_error")
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise Invalid(f"inputs: a non-empty list of {kind}", code="validation_error")
    if len(inputs) > MAX_INPUTS:
        raise Invalid(
            f"inputs: {len(inputs)} inputs; at most {MAX_INPUTS} per request",
            code="too_many_inputs",
        )
    return body


@router.get(
    "/v1/models/{model_id}/report",
    # Not response_class=HTMLResponse: that would document the JSON errors as text/html.
    response_model=None,
    responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}},
)
def model_report(model_id: str, owner: CurrentOwner, session: SessionDep) -> HTMLResponse:
    """Training curves, confusion matrix and per-class metrics as an HTML page."""
    model = service.get(session=session, owner=owner, model_id=model_id)
    job = session.get(Job, model.job_id)
    return HTMLResponse(report.render(model=model, history=job.history if job else []))


@router.get(
    "/v1/models/{model_id}/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def export_model(
    model_id: str,
    owner: CurrentOwner,
    session: SessionDep,
    storage: StorageDep,
    format: Annotated[Literal["safetensors", "torchscript", "onnx"], Query()] = "safetensors",
):
    """The model as safetensors (state dict), TorchScript or ONNX (inputs in [0, 1])."""
    model = service.get(session=session, owner=owner, model_id=model_id)
    session.close()
    path = export(storage.model_dir(model.id), format)  # EngineError: 422
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{model.id}{Path(path).suffix if format != 'torchscript' else '.pt'}",
    )
