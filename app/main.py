"""create_app(): routers, error handlers, middleware and the lifespan."""

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.auth.router import router as admin_router
from app.auth.service import KeyCache, ensure_admin
from app.core.config import get_settings
from app.core.db import get_sessionmaker
from app.core.errors import ErrorRule, install_error_handlers
from app.core.middleware import BodyLimit, HeaderLimit, RefuseNulPath
from app.core.schemas import ErrorResponse
from app.datasets.common import IngestError
from app.datasets.router import router as datasets_router
from app.jobs.reconciler import Reconciler
from app.jobs.router import router as jobs_router
from app.ops.health import router as health_router
from app.ops.metrics import Metrics
from app.ops.metrics import router as metrics_router
from app.predictions.fastpath import PredictFastPath
from app.predictions.router import router as predict_router
from app.predictions.service import ModelCache
from app.registry.base_models_router import router as base_models_router
from app.registry.router import router as models_router
from app.storage.local import LocalStorage
from app.training.errors import EngineError
from app.web import router as web
from app.webhooks.delivery import Deliverer
from app.webhooks.router import router as webhooks_router

log = logging.getLogger("finetune")

# The errors raised below the routes, rendered by the one handler from their own code,
# message and field (ApiError, the API's own, is always there).
ERRORS = {
    # The engine refused the request or its inputs (an unknown architecture, bad weights).
    EngineError: ErrorRule(422),
    # Ingestion refused the uploaded data: the `file` part of the upload, unless it says.
    IngestError: ErrorRule(422, field="file"),
}

# An upload older than this in the scratch area was interrupted (its API was killed).
SCRATCH_MAX_AGE_S = 6 * 3600


def announce_admin_key(key: str) -> None:
    print(
        "\n  Admin API key (shown once, stored hashed):\n\n"
        f"    {key}\n\n  Send it as 'Authorization: Bearer <key>'.\n",
        flush=True,
    )


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    settings.ensure_dirs()
    for path in LocalStorage(settings).sweep_scratch(older_than_s=SCRATCH_MAX_AGE_S):
        log.info("removed scratch left by an interrupted upload: %s", path)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    with get_sessionmaker()() as session:
        generated = ensure_admin(session=session, configured_key=settings.api_key)
    if generated:
        announce_admin_key(generated)
    app.state.models = ModelCache(
        capacity=settings.model_cache_size,
        max_batch=settings.predict_max_batch,
    )
    reconciler = Reconciler(settings)
    reconciler.start()
    deliverer = Deliverer(settings)
    deliverer.start()
    try:
        yield
    finally:
        deliverer.stop()
        reconciler.stop()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="finetune",
        version="0.1.0",
        lifespan=lifespan,
        description="Transfer learning by fine-tuning, as a REST service.",
        responses={k: {"model": ErrorResponse} for k in (400, 401, 404, 409, 413, 422)},
    )
    app.state.keys = KeyCache(ttl=settings.auth_cache_seconds)
    install_error_handlers(app, ERRORS)
    for router in (
        health_router,
        metrics_router,
        datasets_router,
        jobs_router,
        models_router,
        predict_router,
        base_models_router,
        admin_router,
        webhooks_router,
    ):
        app.include_router(router)
    web.install(app)  # the dashboard at / (a client of the routes above)
    # Innermost: the hot predict request, under the body limit and the metrics.
    app.add_middleware(PredictFastPath)
    # Multipart framing adds a little to the file itself.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 1024 * 1024)
    app.add_middleware(RefuseNulPath)
    app.add_middleware(HeaderLimit, limit=settings.max_header_bytes)
    app.add_middleware(Metrics)
    return app
