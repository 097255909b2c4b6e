from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Response, UploadFile, status

from app.auth.deps import CurrentOwner
from app.core.deps import PageParams, SessionDep
from app.core.routing import Route
from app.core.schemas import NoNul, Page
from app.datasets import service
from app.datasets.schemas import DatasetOut, Task
from app.jobs import service as jobs
from app.storage.deps import StorageDep

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=Route)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def create_dataset(
    owner: CurrentOwner,
    response: Response,
    session: SessionDep,
    storage: StorageDep,
    file: Annotated[UploadFile, File(description="ZIP/tar of class folders, or a CSV")],
    name: Annotated[str | None, Form(max_length=200), NoNul] = None,
    task: Annotated[Task | None, Form()] = None,
    label_column: Annotated[str, Form(min_length=1, max_length=200), NoNul] = "label",
    text_column: Annotated[str, Form(min_length=1, max_length=200), NoNul] = "text",
    idempotency_key: Annotated[str | None, Header(max_length=200), NoNul] = None,
    label_separator: Annotated[
        str, Form(min_length=1, max_length=1, description="multi-label: between labels"), NoNul
    ] = "|",
):
    dataset, created = service.create(
        session=session,
        owner=owner,
        storage=storage,
        upload=file.file,
        filename=file.filename,
        name=name,
        task=task,
        label_column=label_column,
        text_column=text_column,
        idempotency_key=idempotency_key,
        label_separator=label_separator,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return dataset


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    owner: CurrentOwner,
    session: SessionDep,
    page: PageParams,
):
    rows, total = service.list_(session=session, owner=owner, limit=page.limit, offset=page.offset)
    return page.body(rows, total)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, owner: CurrentOwner, session: SessionDep):
    return service.get(session=session, owner=owner, dataset_id=dataset_id)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: str, owner: CurrentOwner, session: SessionDep, storage: StorageDep
) -> None:
    service.delete(
        session=session,
        owner=owner,
        storage=storage,
        dataset_id=dataset_id,
        in_use=jobs.dataset_in_use,
    )
