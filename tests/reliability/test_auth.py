"""Keys and owners on a live Redis + PostgreSQL installation: no secret in the database or
the logs, one 401 for every bad key, and another owner's ids are 404 everywhere."""

import hashlib

import httpx
import psycopg
import pytest

from tests.conftest import TEST_KEY
from tests.helpers import digit_images, png_bytes
from tests.reliability.conftest import Live, finished, poll, upload_digits

TINY = {
    "base_model": "tiny_cnn",
    "strategy": "full",
    "image_size": 32,
    "batch_size": 16,
    "epochs": 1,
    "early_stopping_patience": None,
}


@pytest.fixture(scope="module")
def alice(dist: Live, tmp_path_factory):
    """An owner with a dataset, a finished job and its model."""
    dist.ensure_workers(1)
    with dist.client() as admin:
        created = admin.post("/v1/admin/keys", json={"name": "alice"}).json()
    client = dist.client(created["key"])
    ds = upload_digits(client, tmp_path_factory.mktemp("alice") / "d.zip", 6, 2)
    job = client.post("/v1/jobs", json={**TINY, "dataset_id": ds["id"]}).json()
    job = poll(client, job["id"], finished, 60)
    assert job["status"] == "succeeded", job
    yield {"client": client, "secret": created["key"], "dataset": ds, "job": job}
    client.close()


def _dump_database(live: Live) -> str:
    """Every row of every table, as text."""
    url = live.env["FINETUNE_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    out = []
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            out += [r[0] for r in conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')]
    assert {"api_keys", "owners", "jobs", "datasets", "models", "job_events"} <= set(tables)
    return "\n".join(out)


def test_no_secret_in_the_database_or_the_logs(dist: Live, alice):
    with dist.client() as admin:
        revoked = admin.post("/v1/admin/keys", json={"name": "revoked"}).json()
        assert admin.delete(f"/v1/admin/keys/{revoked['id']}").status_code == 200
    secrets = [TEST_KEY, alice["secret"], revoked["key"]]
    # Used, so that any logging of requests would have seen them.
    for secret in secrets:
        httpx.get(f"{dist.base}/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
    dump = _dump_database(dist)
    for secret in secrets:
        assert secret not in dump
        assert secret.removeprefix("ft_") not in dump
        # ...while the table that holds the keys was in the dump (as hashes).
        assert hashlib.sha256(secret.encode()).hexdigest() in dump
    logs = dist.logs_full()
    assert "/v1/jobs" in logs  # the access log is there, and has no key in it
    for secret in secrets:
        assert secret not in logs


def test_missing_wrong_and_revoked_keys_get_one_401(dist: Live, alice):
    with dist.client() as admin:
        bob = admin.post("/v1/admin/keys", json={"name": "bob"}).json()
        admin.delete(f"/v1/admin/keys/{bob['id']}")
    model_id = alice["job"]["model_id"]
    requests = [
        ("GET", "/v1/jobs", {}),
        ("GET", f"/v1/models/{model_id}", {}),
        ("POST", "/v1/datasets", {"files": {"file": ("x.zip", b"PK")}}),
        ("POST", f"/v1/models/{model_id}/predict", {"files": {"files": ("a.png", b"x")}}),
        ("POST", "/v1/admin/keys", {"json": {"name": "x"}}),
    ]
    bodies = set()
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer ft_wrong"},
        {"Authorization": alice["secret"]},  # no scheme
        {"Authorization": f"Basic {alice['secret']}"},
        {"Authorization": f"Bearer {bob['key']}"},  # revoked
    ):
        for method, path, kwargs in requests:
            r = httpx.request(method, f"{dist.base}{path}", headers=headers, **kwargs)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            bodies.add(r.text)
    assert len(bodies) == 1, bodies
    assert '"code":"unauthorized"' in bodies.pop().replace(" ", "")


def test_another_owners_ids_are_404_everywhere(dist: Live, alice):
    a = alice
    ds_id, job_id, model_id = a["dataset"]["id"], a["job"]["id"], a["job"]["model_id"]
    png = png_bytes(next(digit_images(1, size=32))[1])
    with dist.new_owner("mallory") as m:

        def both(method, path_of, **kwargs):
            """Mallory's answer for Alice's id and for an id that does not exist."""
            theirs = m.request(method, path_of(True), **kwargs)
            unknown = m.request(method, path_of(False), **kwargs)
            return theirs, unknown

        cases = {
            "GET dataset": ("GET", lambda t: f"/v1/datasets/{ds_id if t else 'ds_nope'}", {}),
            "DELETE dataset": (
                "DELETE",
                lambda t: f"/v1/datasets/{ds_id if t else 'ds_nope'}",
                {},
            ),
            "GET job": ("GET", lambda t: f"/v1/jobs/{job_id if t else 'job_nope'}", {}),
            "cancel job": ("POST", lambda t: f"/v1/jobs/{job_id if t else 'job_nope'}/cancel", {}),
            "job events": ("GET", lambda t: f"/v1/jobs/{job_id if t else 'job_nope'}/events", {}),
            "job event stream": (
                "GET",
                lambda t: f"/v1/jobs/{job_id if t else 'job_nope'}/events",
                {"headers": {"Accept": "text/event-stream"}},
            ),
            "GET model": ("GET", lambda t: f"/v1/models/{model_id if t else 'mdl_nope'}", {}),
            "predict": (
                "POST",
                lambda t: f"/v1/models/{model_id if t else 'mdl_nope'}/predict",
                {"files": {"files": ("a.png", png, "image/png")}},
            ),
            "job on their dataset": (
                "POST",
                lambda t: "/v1/jobs",
                {"json": {**TINY, "dataset_id": ds_id}},
            ),
            "job on their model": (
                "POST",
                lambda t: "/v1/jobs",
                {"json": {**TINY, "dataset_id": ds_id, "base_model": f"model:{model_id}"}},
            ),
        }
        for name, (method, path_of, kwargs) in cases.items():
            theirs, unknown = both(method, path_of, **kwargs)
            assert theirs.status_code == 404, (name, theirs.text)
            assert theirs.json()["error"]["code"] == "not_found", (name, theirs.text)
            assert unknown.status_code == 404, (name, unknown.text)

        # A job on Mallory's own dataset that starts from Alice's model: 404 on the model.
        own = upload_digits(m, dist.root / "mallory.zip", 6, 2)
        r = m.post(
            "/v1/jobs", json={**TINY, "dataset_id": own["id"], "base_model": f"model:{model_id}"}
        )
        assert r.status_code == 404 and model_id in r.json()["error"]["message"], r.text
        # Lists hold only Mallory's own things; the admin surface does not exist for her.
        assert m.get("/v1/jobs").json()["total"] == 0
        assert m.get("/v1/models").json()["total"] == 0
        assert [d["id"] for d in m.get("/v1/datasets").json()["items"]] == [own["id"]]
        assert m.get("/v1/admin/keys").status_code == 404

    # Alice still has everything Mallory tried to touch.
    c = a["client"]
    assert c.get(f"/v1/datasets/{ds_id}").status_code == 200
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    r = c.post(f"/v1/models/{model_id}/predict", files={"files": ("a.png", png, "image/png")})
    assert r.status_code == 200, r.text
