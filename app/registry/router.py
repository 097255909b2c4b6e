"""Trained models: list, get, the HTML report and the export. Predict is its own package
(app.predictions)."""

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, HTMLResponse

from app.auth.deps import CurrentOwner
from app.core.deps import PageParams, SessionDep
from app.core.routing import Route
from app.core.schemas import Page
from app.jobs.models import Job
from app.registry import report, service
from app.registry.schemas import ModelOut
from app.storage.deps import StorageDep
from app.training.export import export

router = APIRouter(tags=["models"], route_class=Route)


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
