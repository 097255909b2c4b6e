"""Schemathesis against the live server's own OpenAPI schema, as the admin: no 5xx, and
every response conforms to the schema (status codes, content types, bodies).

Bounded and repeatable: a fixed number of examples per operation and derandomized
generation. Path ids are real ones (a dataset, a finished job, its model) half of the
time, so the fuzzing reaches past the 404 on an unknown id.
"""

import hashlib
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TEST_KEY
from tests.reliability.conftest import Live, train_tiny_model, upload_digits

EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module", params=["embedded", "dist"])
def target(request, tmp_path_factory) -> tuple[Live, dict]:
    """A live installation (SQLite, then PostgreSQL) and real ids on it: a dataset, a
    finished job and its model, all the admin's. Then no worker, so jobs the fuzzer
    creates stay queued instead of training with random settings."""
    live: Live = request.getfixturevalue(request.param)
    live.ensure_workers(1)
    with live.client() as admin:
        ds = upload_digits(admin, tmp_path_factory.mktemp("fuzz") / "d.zip", 6, 2)
        job = train_tiny_model(admin, ds["id"])
    for proc in live.workers:
        Live.kill(proc)
    yield (
        live,
        {
            "dataset_id": ds["id"],
            "job_id": job["id"],
            "model_id": job["model_id"],
            "key_id": "key_nope",
        },
    )
    with live.client() as admin:  # what the fuzzer queued never runs
        for job in admin.get("/v1/jobs", params={"status": "queued", "limit": 500}).json()["items"]:
            admin.post(f"/v1/jobs/{job['id']}/cancel")


def _pick(case, real_ids: dict) -> None:
    """Swap in a real id for half of the generated cases (decided by the case itself, so a
    rerun makes the same choices)."""
    params = case.path_parameters or {}
    for name in list(params):
        digest = hashlib.sha256(f"{case.operation.label}{params[name]!r}".encode()).digest()
        if name in real_ids and digest[0] % 2 == 0 and case.method.upper() != "DELETE":
            params[name] = real_ids[name]
    body = case.body
    if isinstance(body, dict) and "dataset_id" in body:
        digest = hashlib.sha256(repr(sorted(body.items(), key=str)).encode()).digest()
        if digest[0] % 2 == 0:
            body["dataset_id"] = real_ids["dataset_id"]
        if digest[1] % 2 == 0 and "base_model" in body:
            body["base_model"] = "tiny_cnn"  # past the base-model check: a job is queued


def _fuzz(operation, mode: GenerationMode, base_url: str, real_ids: dict, seen: Counter) -> None:
    """Run one operation's bounded examples; raise what schemathesis found."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        _pick(case, real_ids)
        response = case.call(
            base_url=base_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30
        )
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    fuzz()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz_no_5xx_and_responses_conform(target, mode):
    live, real_ids = target
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    failures: dict[str, str] = {}
    seen: dict[str, Counter] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        seen[operation.label] = Counter()
        if mode == GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
            continue  # a free-form string path id has no invalid form to generate
        try:
            _fuzz(operation, mode, live.base, real_ids, seen[operation.label])
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, operation.label  # nothing there to negate
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, then all
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    print(f"\n[fuzz {live.mode} {mode.value}] status codes per operation:")
    for label, statuses in seen.items():
        print(f"  {label:40s} {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    assert len(seen) >= 19, seen
    # Negative cases exist only where a parameter or body can be made invalid.
    assert sum(bool(c) for c in seen.values()) >= (19 if mode == GenerationMode.POSITIVE else 8)


def test_offsets_past_any_integer_column_are_a_422(target):
    """Found by the fuzzer: offset=10**22 overflowed SQLite's INTEGER and answered 500."""
    live, _ = target
    with live.client() as admin:
        for path, param in (
            ("/v1/datasets", "offset"),
            ("/v1/jobs", "offset"),
            ("/v1/models", "offset"),
            ("/v1/jobs/job_nope/events", "after"),
        ):
            r = admin.get(path, params={param: 10**22})
            assert r.status_code == 422, (path, r.text)
            assert r.json()["error"]["fields"][0]["field"] == param


def test_an_unexpected_error_is_still_one_json_shape(data_dir):
    """A bug anywhere answers the documented error shape, with no internals in it."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    assert "secret internals" not in r.text


def test_nul_bytes_anywhere_are_a_4xx(target):
    """PostgreSQL refuses NUL in text: it must be the client's 4xx, not a 500 (and not a
    dropped connection)."""
    live, real_ids = target
    ds_id = real_ids["dataset_id"]
    probes = [
        ("GET", "/v1/datasets/ds_%00x", {}),
        ("DELETE", "/v1/datasets/ds_%00x", {}),
        ("GET", "/v1/jobs/job_%00x", {}),
        ("POST", "/v1/jobs/job_%00x/cancel", {}),
        ("GET", "/v1/jobs/job_%00x/events", {}),
        ("GET", "/v1/models/mdl_%00x", {}),
        ("POST", "/v1/models/mdl_%00x/predict", {"files": {"files": ("a.png", b"x")}}),
        ("DELETE", "/v1/admin/keys/key_%00x", {}),
        ("POST", "/v1/admin/keys", {"json": {"name": "a\u0000b"}}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": "ds_\u0000", "base_model": "tiny_cnn"}}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": ds_id, "base_model": "model:mdl_\u0000"}}),
    ]
    with live.client() as admin:
        for method, path, kwargs in probes:
            r = admin.request(method, path, **kwargs)
            assert 400 <= r.status_code < 500, (method, path, kwargs, r.text)
            assert r.json()["error"]["code"], r.text
        csv = b"x,label\n" + b"".join(b"%d,%s\n" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(20))
        # The dataset form: a NUL in its name is refused, the file itself never stored.
        r = admin.post(
            "/v1/datasets",
            files={"file": ("d.csv", csv)},
            data={"name": "bad\u0000name"},
        )
        assert 400 <= r.status_code < 500, r.text
        # ...and a NUL in the file's name (the dataset's name when none is given).
        r = admin.post("/v1/datasets", files={"file": ("d\u0000.csv", csv)})
        assert r.status_code < 500, r.text
        assert admin.get("/healthz").status_code == 200
