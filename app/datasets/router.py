from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from app.core.deps import CurrentOwner, Offset, SessionDep, SettingsDep
from app.core.pagination import page_body
from app.core.routing import Route
from app.core.schemas import NoNul, Page
from app.datasets import service
from app.datasets.schemas import DatasetOut, Task
from app.storage.local import LocalStorage

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], route_class=Route)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut)
def create_dataset(
    owner: CurrentOwner,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="ZIP/tar of class folders, or a CSV")],
    name: Annotated[str | None, Form(max_length=200), NoNul] = None,
    task: Annotated[Task | None, Form()] = None,
    label_column: Annotated[str, Form(min_length=1, max_length=200), NoNul] = "label",
    text_column: Annotated[str, Form(min_length=1, max_length=200), NoNul] = "text",
    label_separator: Annotated[
        str, Form(min_length=1, max_length=1, description="multi-label: between labels"), NoNul
    ] = "|",
):
    return service.create(
        session=session,
        owner=owner,
        storage=LocalStorage(settings),
        upload=file.file,
        filename=file.filename,
        name=name,
        task=task,
        label_column=label_column,
        text_column=text_column,
        label_separator=label_separator,
    )


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    owner: CurrentOwner,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
):
    rows, total = service.list_(session=session, owner=owner, limit=limit, offset=offset)
    return page_body(rows, total, offset)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, owner: CurrentOwner, session: SessionDep):
    return service.get(session=session, owner=owner, dataset_id=dataset_id)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: str, owner: CurrentOwner, session: SessionDep, settings: SettingsDep
) -> None:
    service.delete(
        session=session, owner=owner, storage=LocalStorage(settings), dataset_id=dataset_id
    )
