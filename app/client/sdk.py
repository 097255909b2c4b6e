"""The Python SDK: one `Client` with a resource object per noun of the REST API.

    from app.client import Client

    client = Client("http://127.0.0.1:8000", key="ft_...")
    ds = client.datasets.upload("flowers/")              # a folder is zipped as it streams
    job = client.jobs.create(dataset_id=ds.id, base_model="efficientnet_lite0", epochs=5)
    job = client.jobs.wait(job.id)                      # or: for ev in client.jobs.follow(job.id)
    print(client.models.predict(job.model_id, files=["rose.jpg"]).predictions[0].label)

Every method returns the server's own response model (pydantic), and every error answer
raises `ApiError(status, code, message)`. The CLI (`app.client.cli`) is built on this.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from app.core.schemas import Page
from app.datasets.schemas import DatasetOut as Dataset
from app.jobs.schemas import JobEventOut as JobEvent
from app.jobs.schemas import JobOut as Job
from app.predictions.schemas import PredictResponse
from app.registry.schemas import BaseModelOut as BaseModel
from app.registry.schemas import ModelOut as Model
from app.training.atomic import atomic_path
from app.webhooks.schemas import DeliveryOut as Delivery
from app.webhooks.schemas import WebhookCreated, WebhookOut
from app.webhooks.signing import InvalidSignature, verify

__all__ = [
    "ApiError",
    "BaseModel",
    "Client",
    "Dataset",
    "Delivery",
    "InvalidSignature",
    "Job",
    "JobEvent",
    "Model",
    "PredictResponse",
    "WebhookCreated",
    "WebhookOut",
    "verify",
]

TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ApiError(Exception):
    """An error answer from the server (status >= 400), or status 0 when it could not be
    reached at all (code "connection_error")."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.status, self.code, self.message = status, code, message


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    if not response.is_stream_consumed:
        response.read()
    try:
        err = response.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:300] or response.reason_phrase
    raise ApiError(response.status_code, code, message)


class _Resource:
    def __init__(self, client: Client):
        self._client = client

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        return self._client._request(method, path, **kwargs)


# --- uploads -------------------------------------------------------------------------------


class _Chunks:
    """A write-only stream that keeps what was written until it is taken (zipfile writes
    into it; the upload generator takes the bytes as they come)."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._pos = 0

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


def _folder_files(folder: Path) -> list[tuple[Path, str]]:
    files = [
        (p, p.relative_to(folder).as_posix())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not any("/" in arcname for _, arcname in files):
        raise ApiError(
            0, "usage_error", f"{folder}: not a folder of class folders (<class>/<image>)"
        )
    return files


def zip_stream(folder: Path) -> Iterator[bytes]:
    """The folder as a ZIP, produced piece by piece: at most one CHUNK of a file is in
    memory at a time. Images are already compressed, so entries are stored."""
    files = _folder_files(folder)
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path, arcname in files:
            info = zipfile.ZipInfo.from_file(path, arcname)
            info.compress_type = zipfile.ZIP_STORED
            with path.open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while block := src.read(CHUNK):
                    dst.write(block)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


def _multipart(
    fields: dict[str, str], filename: str, content_type: str, body: Iterable[bytes]
) -> tuple[str, Iterator[bytes]]:
    boundary = os.urandom(16).hex()

    def gen() -> Iterator[bytes]:
        for name, value in fields.items():
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            ).encode()
        quoted = filename.replace('"', "%22").replace("\r", " ").replace("\n", " ")
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{quoted}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        for chunk in body:
            if chunk:
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", gen()


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    while block := f.read(CHUNK):
        yield block


def upload_kind(path: Path) -> str:
    """'folder', 'archive' or 'csv'; ApiError(usage_error) for anything else."""
    if not path.exists():
        raise ApiError(0, "usage_error", f"{path}: no such file or folder")
    if path.is_dir():
        return "folder"
    name = path.name.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(ARCHIVE_SUFFIXES) or zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        return "archive"
    raise ApiError(
        0, "usage_error", f"{path}: not a folder of class folders, a ZIP/tar archive or a CSV"
    )


# --- resources -----------------------------------------------------------------------------


class Datasets(_Resource):
    def upload(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        task: str | None = None,
        label_column: str | None = None,
        text_column: str | None = None,
    ) -> Dataset:
        """Upload a folder of class folders (zipped as it streams), a ZIP/tar archive, or
        a CSV (both sent as they are)."""
        path = Path(path)
        kind = upload_kind(path)
        fields = {
            k: v
            for k, v in {
                "name": name or (path.name if kind == "folder" else path.stem),
                "task": task,
                "label_column": label_column,
                "text_column": text_column,
            }.items()
            if v is not None
        }
        with ExitStack() as stack:
            if kind == "folder":
                filename, ctype, body = f"{path.name}.zip", "application/zip", zip_stream(path)
            else:
                f = stack.enter_context(path.open("rb"))
                ctype = "text/csv" if kind == "csv" else "application/octet-stream"
                filename, body = path.name, _file_chunks(f)
            content_type, content = _multipart(fields, filename, ctype, body)
            r = self._request(
                "POST", "/v1/datasets", content=content, headers={"Content-Type": content_type}
            )
        return Dataset.model_validate(r.json())

    def list(self, *, limit: int = 50, offset: int = 0) -> Page[Dataset]:
        r = self._request("GET", "/v1/datasets", params={"limit": limit, "offset": offset})
        return Page[Dataset].model_validate(r.json())

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._request("GET", f"/v1/datasets/{dataset_id}").json())

    def delete(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")


class Jobs(_Resource):
    def create(
        self, *, dataset_id: str, base_model: str, idempotency_key: str | None = None, **spec
    ) -> Job:
        """Queue a fine-tuning job; `spec` takes the other JobSpec fields (strategy,
        epochs, image_size, learning_rate, ...)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"dataset_id": dataset_id, "base_model": base_model, **spec}
        return Job.model_validate(
            self._request("POST", "/v1/jobs", json=body, headers=headers).json()
        )

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> Page[Job]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return Page[Job].model_validate(self._request("GET", "/v1/jobs", params=params).json())

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def events(self, job_id: str, *, after: int = 0, limit: int = 500) -> list[JobEvent]:
        r = self._request(
            "GET", f"/v1/jobs/{job_id}/events", params={"after": after, "limit": limit}
        )
        return [JobEvent.model_validate(e) for e in r.json()]

    def follow(
        self, job_id: str, *, after: int = 0, reconnect_for: float = 120.0
    ) -> Iterator[JobEvent]:
        """Every event of the job after `after`, live from the server-sent event stream,
        until its final status event. A dropped stream (an API restart, a proxy timeout)
        is reopened with Last-Event-ID, so no event is lost or repeated; it gives up with
        ApiError(connection_error) after `reconnect_for` seconds without a connection."""
        last = after
        down_since: float | None = None
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                with self._client._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(10.0, read=None),
                ) as r:
                    _raise_for(r)
                    down_since = None
                    for ev in _parse_sse(r.iter_lines()):
                        last = ev.id
                        yield ev
                        if ev.type == "status" and ev.data.get("status") in TERMINAL:
                            return
            except httpx.TransportError as exc:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > reconnect_for:
                    raise ApiError(0, "connection_error", f"event stream lost: {exc}") from None
                time.sleep(1.0)
                continue
            # The server ended the stream without a final status: it was restarting, or
            # the job ended between its reads. Catch up, then reopen if it still runs.
            for ev in self.events(job_id, after=last):
                last = ev.id
                yield ev
                if ev.type == "status" and ev.data.get("status") in TERMINAL:
                    return
            if self.get(job_id).status in TERMINAL:
                return
            time.sleep(0.5)

    def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Block until the job ends (fed by the event stream); returns the final job.
        TimeoutError once `timeout` seconds have passed (checked as events arrive; the
        job keeps running)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in self.follow(job_id):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout}s")
        return self.get(job_id)


def _parse_sse(lines: Iterable[str]) -> Iterator[JobEvent]:
    """text/event-stream → events (id, event and data fields; comments ignored)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield JobEvent.model_validate(json.loads("\n".join(data)))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield JobEvent.model_validate(json.loads("\n".join(data)))


class Models(_Resource):
    def list(self, *, limit: int = 50, offset: int = 0) -> Page[Model]:
        r = self._request("GET", "/v1/models", params={"limit": limit, "offset": offset})
        return Page[Model].model_validate(r.json())

    def get(self, model_id: str) -> Model:
        return Model.model_validate(self._request("GET", f"/v1/models/{model_id}").json())

    def predict(
        self,
        model_id: str,
        *,
        files: Iterable[str | os.PathLike] | None = None,
        inputs: list | None = None,
        top_k: int | None = None,
    ) -> PredictResponse:
        """Images (`files`: paths) for an image model; `inputs` (strings for a text
        model, {column: value} rows for a tabular one) otherwise."""
        path = f"/v1/models/{model_id}/predict"
        if files is not None:
            with ExitStack() as stack:
                parts = [
                    ("files", (Path(p).name, stack.enter_context(Path(p).open("rb"))))
                    for p in files
                ]
                data = {"top_k": str(top_k)} if top_k else {}
                r = self._request("POST", path, files=parts, data=data)
        else:
            body: dict[str, Any] = {"inputs": inputs or []}
            if top_k:
                body["top_k"] = top_k
            r = self._request("POST", path, json=body)
        return PredictResponse.model_validate(r.json())

    def export(
        self, model_id: str, dest: str | os.PathLike, *, format: str = "safetensors"
    ) -> Path:
        """Stream the exported model into `dest`; returns the path."""
        dest = Path(dest)
        with self._client._http.stream(
            "GET", f"/v1/models/{model_id}/export", params={"format": format}
        ) as r:
            _raise_for(r)
            with atomic_path(dest) as tmp, tmp.open("wb") as f:
                for block in r.iter_bytes(CHUNK):
                    f.write(block)
        return dest

    def report(self, model_id: str) -> str:
        """The model's HTML report (curves, confusion matrix)."""
        return self._request("GET", f"/v1/models/{model_id}/report").text


class BaseModels(_Resource):
    def list(self) -> list[BaseModel]:
        return [BaseModel.model_validate(b) for b in self._request("GET", "/v1/base-models").json()]

    def upload(
        self, path: str | os.PathLike, *, architecture: str, name: str | None = None
    ) -> BaseModel:
        """Your own pretrained weights (.safetensors) for `architecture`."""
        path = Path(path)
        if not path.is_file():
            raise ApiError(0, "usage_error", f"{path}: no such file")
        data = {"architecture": architecture, **({"name": name} if name else {})}
        with path.open("rb") as f:
            r = self._request("POST", "/v1/base-models", files={"file": (path.name, f)}, data=data)
        return BaseModel.model_validate(r.json())


class Webhooks(_Resource):
    def create(self, url: str, events: list[str] | None = None) -> WebhookCreated:
        """Register an endpoint; the answer's `secret` is shown this once."""
        body: dict[str, Any] = {"url": url}
        if events:
            body["events"] = events
        return WebhookCreated.model_validate(
            self._request("POST", "/v1/webhooks", json=body).json()
        )

    def list(self, *, limit: int = 50, offset: int = 0) -> Page[WebhookOut]:
        r = self._request("GET", "/v1/webhooks", params={"limit": limit, "offset": offset})
        return Page[WebhookOut].model_validate(r.json())

    def get(self, webhook_id: str) -> WebhookOut:
        return WebhookOut.model_validate(self._request("GET", f"/v1/webhooks/{webhook_id}").json())

    def delete(self, webhook_id: str) -> None:
        self._request("DELETE", f"/v1/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str, *, limit: int = 50, offset: int = 0) -> Page[Delivery]:
        r = self._request(
            "GET",
            f"/v1/webhooks/{webhook_id}/deliveries",
            params={"limit": limit, "offset": offset},
        )
        return Page[Delivery].model_validate(r.json())


@dataclass
class Key:
    id: str
    owner_id: str
    name: str
    key: str | None = None


class Keys(_Resource):
    """Admin only: owners and their keys."""

    def create(self, name: str) -> Key:
        body = self._request("POST", "/v1/admin/keys", json={"name": name}).json()
        return Key(id=body["id"], owner_id=body["owner_id"], name=body["name"], key=body["key"])

    def list(self) -> list[dict]:
        return self._request("GET", "/v1/admin/keys").json()

    def revoke(self, key_id: str) -> dict:
        return self._request("DELETE", f"/v1/admin/keys/{key_id}").json()


class Client:
    """A finetune server at `url`, authenticated by `key` (FINETUNE_URL and
    FINETUNE_API_KEY when not given)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 300.0):
        self.url = (url or os.environ.get("FINETUNE_URL") or DEFAULT_URL).rstrip("/")
        key = key or os.environ.get("FINETUNE_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0)
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.base_models = BaseModels(self)
        self.webhooks = Webhooks(self)
        self.keys = Keys(self)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(
                0, "connection_error", f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        _raise_for(r)
        return r

    def health(self) -> dict:
        return self._request("GET", "/healthz").json()

    def ready(self) -> dict:
        """/readyz: {"status", "checks": {database, broker}}; a 503 is an answer here."""
        try:
            return self._http.get("/readyz").json()
        except httpx.TransportError as exc:
            raise ApiError(0, "connection_error", f"cannot reach {self.url}: {exc}") from None

    def metrics(self) -> str:
        """/metrics in the Prometheus text format."""
        return self._request("GET", "/metrics").text

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_csv_inputs(path: str | os.PathLike, *, task: str, text_column: str = "text") -> list:
    """A CSV's rows as predict inputs: a text model's `text_column` (or the only column),
    a tabular model's rows with numbers as numbers and empty cells as None."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ApiError(0, "usage_error", f"{path}: no rows")
    if task == "text_classification":
        columns = list(rows[0])
        column = (
            text_column if text_column in columns else (columns[0] if len(columns) == 1 else None)
        )
        if column is None:
            raise ApiError(
                0, "usage_error", f"{path}: no column {text_column!r} (columns: {columns})"
            )
        return [r[column] for r in rows]
    return [{k: _cell(v) for k, v in r.items()} for r in rows]


def _cell(value: str | None):
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value
