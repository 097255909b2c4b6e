"""The used-by path through the Python SDK, against a live `finetune serve`."""

import io
import json
import zipfile

import pytest

from app.client import ApiError, Client
from app.client.sdk import verify, zip_stream
from tests.conftest import TEST_KEY
from tests.helpers import digit_images
from tests.webhooks.test_webhooks import Receiver


@pytest.mark.slow
def test_used_by_path(server, digits_folder, tmp_path):
    client = Client(server, TEST_KEY)
    receiver = Receiver()
    hook = client.webhooks.create(receiver.url, events=["job.succeeded", "job.epoch"])
    ds = client.datasets.upload(digits_folder, name="sdk-digits")
    assert ds.num_samples == 48 and ds.classes == ["digit_0", "digit_1", "digit_2"]
    job = client.jobs.create(
        dataset_id=ds.id, base_model="efficientnet_lite0", strategy="layerwise", epochs=3,
        image_size=32, learning_rate=0.01, idempotency_key="sdk-1",
    )  # fmt: skip
    assert job.status == "queued"
    again = client.jobs.create(
        dataset_id=ds.id, base_model="efficientnet_lite0", strategy="layerwise", epochs=3,
        image_size=32, learning_rate=0.01, idempotency_key="sdk-1",
    )  # fmt: skip
    assert again.id == job.id

    events = list(client.jobs.follow(job.id))
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "each event once, in order"
    statuses = [e.data["status"] for e in events if e.type == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    epochs = [e.data["epoch"] for e in events if e.type == "epoch"]
    assert epochs == list(range(len(epochs))) and len(epochs) > 1  # the probe is epoch 0

    # A follower that starts late (Last-Event-ID) gets only what came after.
    tail = list(client.jobs.follow(job.id, after=ids[-3]))
    assert [e.id for e in tail] == ids[-2:]

    done = client.jobs.wait(job.id)
    assert done.status == "succeeded" and done.model_id
    # The worker wrote the events to the outbox with each transition; the API sent them.
    received = receiver.wait_for(len(epochs) + 1)
    for headers, body in received:
        verify(hook.secret, headers, body)
    bodies = [json.loads(body) for _, body in received]
    assert [b["type"] for b in bodies] == ["job.epoch"] * len(epochs) + ["job.succeeded"]
    assert [b["data"]["progress"]["epoch"] for b in bodies[:-1]] == epochs
    assert bodies[-1]["data"] == done.model_dump(mode="json")
    receiver.close()
    assert {d.status for d in client.webhooks.deliveries(hook.id).items} == {"succeeded"}

    model = client.models.get(done.model_id)
    assert model.classes == ds.classes and "accuracy" in model.metrics
    img = tmp_path / "x.png"
    next(iter(digit_images(per_class=1, size=32, classes=1, offset=30)))[1].save(img)
    pred = client.models.predict(model.id, files=[img], top_k=3)
    assert len(pred.predictions) == 1 and len(pred.predictions[0].top_k) == 3
    assert model.id in [m.id for m in client.models.list().items]
    assert job.id in [j.id for j in client.jobs.list(status="succeeded").items]
    assert any(b.name == "efficientnet_lite0" for b in client.base_models.list())
    assert "Confusion matrix" in client.models.report(model.id)
    assert client.health() == {"status": "ok"}
    assert client.ready()["checks"]["database"] == "ok"
    assert "# TYPE" in client.metrics()

    # Another owner's view: typed 404s, not the rows.
    other = Client(server, client.keys.create("sdk-stranger").key)
    with pytest.raises(ApiError) as err:
        other.models.get(model.id)
    assert (err.value.status, err.value.code) == (404, "not_found")
    assert other.datasets.list().total == 0

    client.datasets.delete(ds.id)
    with pytest.raises(ApiError) as err:
        client.datasets.get(ds.id)
    assert err.value.status == 404


def test_archive_and_csv_are_sent_as_they_are(server, digits_folder, tmp_path):
    client = Client(server, TEST_KEY)
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(digits_folder.rglob("*.png")):
            zf.write(path, path.relative_to(digits_folder).as_posix())
    ds = client.datasets.upload(archive)
    assert ds.name == "d" and ds.num_samples == 48
    rows = ["a,b,label"] + [f"{i},{i % 3},{'xy'[i % 2]}" for i in range(40)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    tab = client.datasets.upload(tmp_path / "t.csv", task="tabular_classification")
    assert tab.task == "tabular_classification" and tab.num_samples == 40
    with pytest.raises(ApiError) as err:
        client.datasets.upload(tmp_path / "missing")
    assert err.value.code == "usage_error"


def test_zip_stream_is_a_valid_zip_made_in_pieces(digits_folder):
    pieces = list(zip_stream(digits_folder))
    assert len([p for p in pieces if p]) > 48  # one file at a time, not one blob
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
    assert len(names) == 48 and all(n.startswith("digit_") for n in names)
    on_disk = {p.relative_to(digits_folder).as_posix() for p in digits_folder.rglob("*.png")}
    assert set(names) == on_disk


def test_a_stopped_server_is_a_connection_error():
    from tests.helpers import free_port

    client = Client(f"http://127.0.0.1:{free_port()}", TEST_KEY)
    with pytest.raises(ApiError) as err:
        client.jobs.list()
    assert err.value.code == "connection_error" and err.value.status == 0
