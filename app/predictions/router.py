"""POST /v1/models/{id}/predict: images as multipart files, text and tabular rows as JSON.

A warm request for a cached model and key is answered below this route
(app.predictions.fastpath); this route is the definition of the API, and answers every
request the lean path does not: first loads, JSON bodies, anything unusual, every error.
"""

import asyncio

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.auth.deps import CurrentOwner
from app.core.errors import Invalid, NotFound
from app.core.routing import Route
from app.core.schemas import ErrorResponse
from app.predictions import inputs
from app.predictions.deps import ModelCacheDep
from app.predictions.schemas import PredictResponse
from app.predictions.service import model_info
from app.storage.deps import StorageDep
from app.training.tasks import Modality, get_task

router = APIRouter(tags=["models"], route_class=Route)

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


@router.post(
    "/v1/models/{model_id}/predict",
    response_model=PredictResponse,
    openapi_extra=PREDICT_BODY,
    responses={415: {"model": ErrorResponse, "description": "wrong content type for the model"}},
)
async def predict(
    model_id: str, request: Request, owner: CurrentOwner, models: ModelCacheDep, storage: StorageDep
):
    # The hot path reads no database once the model is cached (app.predictions.service).
    info = models.info(model_id) or await run_in_threadpool(model_info, models, model_id)
    if info is None or info.owner_id != owner.id:
        raise NotFound(f"model {model_id!r} not found")
    content_type = request.headers.get("content-type", "")
    body = None
    # The content type is checked before a first request loads the model.
    if get_task(info.task).modality == Modality.IMAGE:
        inputs.require_multipart(content_type)
    else:
        inputs.require_json(content_type, info.task)
        body = inputs.json_body(await request.body(), info.task)
    # A first load (seconds of CPU) runs off the event loop, once however many wait.
    batcher = models.peek(info.id) or await models.aget(info.id, storage.model_dir(info.id))
    if body is None:
        prepared, top_k = await _image_inputs(request, batcher.predictor, len(info.classes))
    else:
        top_k = inputs.top_k(body.get("top_k"), len(info.classes))
        prepared = batcher.predictor.check(body["inputs"])
    predictions = await batcher.submit(prepared, top_k)
    return {"model_id": info.id, "predictions": predictions}


async def _image_inputs(request: Request, predictor, n_classes: int) -> tuple[list, int]:
    """The request's images, decoded and prepared at the model's size, and its top_k."""
    form = await request.form(max_files=inputs.MAX_FILES, max_fields=8)
    files = form.getlist("files")
    if not files or any(isinstance(f, str) for f in files):
        raise Invalid(
            "files: send one or more image files as 'files'", code="missing_files", field="files"
        )
    top_k = inputs.top_k(form.get("top_k"), n_classes)
    uploads = [inputs.Upload(f.filename, await f.read()) for f in files]
    pixels = inputs.pixel_budget(uploads)
    # Decoding is CPU work: off the event loop, unless it is too little to be worth the
    # hand-off to a thread.
    if pixels <= inputs.INLINE_DECODE_PIXELS:
        return inputs.prepared_images(predictor, uploads), top_k
    return await asyncio.to_thread(inputs.prepared_images, predictor, uploads), top_k
