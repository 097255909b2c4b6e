"""One job contract (issue 11, item 1).

The API's JobSpec is derived from the engine's TrainConfig (app/training/config.py).
These tests hold the two together from both sides: every engine option is reachable
through POST /v1/jobs (or is named internal, with why); every value the API's published
schema offers is one the engine runs (each choice is driven through the engine's own
factories on a tiny model); the bounds of the edge and of the engine agree, value by
value; and a bad value is a 422 naming its field, over real HTTP.
"""

import dataclasses
import math

import pytest
import torch

from app.jobs.schemas import EDGE_FIELDS, ENGINE_ONLY, JobSpec
from app.training import auto
from app.training.api import resolve_strategy
from app.training.build import build_model, num_blocks
from app.training.config import TrainConfig, validate_config
from app.training.errors import InvalidConfig
from app.training.freeze import apply_plan, sync_optimizer, trainable_param_groups
from app.training.optim import create_optimizer, create_scheduler
from app.training.schedule import plan_schedule
from app.training.tasks import get_task
from tests.helpers import digits_zip
from worker.spec import train_config

ENGINE_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
DERIVED = ENGINE_FIELDS - EDGE_FIELDS.keys() - ENGINE_ONLY.keys()
TINY = "tiny_cnn"  # the engine's test model: a few blocks, trains in milliseconds


@pytest.fixture
def schema(api) -> dict:
    """JobSpec as POST /v1/jobs publishes it."""
    return api.get("/openapi.json").json()["components"]["schemas"]["JobSpec"]


@pytest.fixture
def dataset(api, tmp_path) -> dict:
    archive = digits_zip(tmp_path / "d.zip", per_class=6, size=16, classes=3)
    with archive.open("rb") as f:
        r = api.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()


def schema_choices(prop: dict) -> list:
    """The values a JSON-schema property enumerates (null among them when nullable)."""
    out = []
    for variant in prop.get("anyOf", [prop]):
        out.extend(variant.get("enum", []))
        if "const" in variant:
            out.append(variant["const"])
        if variant.get("type") == "null":
            out.append(None)
    return out


def schema_bounds(prop: dict) -> dict:
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    return {k: v for variant in prop.get("anyOf", [prop]) for k, v in variant.items() if k in keys}


# ------------------------------------------------------------------ every option reachable


def test_every_engine_option_is_an_api_field_or_named_internal() -> None:
    api_fields = set(JobSpec.model_fields)
    unreachable = ENGINE_FIELDS - api_fields - ENGINE_ONLY.keys()
    assert not unreachable, f"TrainConfig fields POST /v1/jobs cannot set: {unreachable}"
    assert not ENGINE_ONLY.keys() & api_fields, "an internal field is an API field too"
    assert api_fields - ENGINE_FIELDS <= EDGE_FIELDS.keys(), "an API field the engine lacks"
    for name, why in {**ENGINE_ONLY, **EDGE_FIELDS}.items():
        assert len(why.split()) >= 3, f"{name}: say why it is not derived"


def test_api_defaults_are_the_engine_defaults_and_the_worker_rebuilds_the_config() -> None:
    spec = JobSpec(dataset_id="ds_1", base_model="efficientnet_lite0")
    engine = TrainConfig()
    for name in DERIVED:
        assert getattr(spec, name) == getattr(engine, name), name
    # What the API stores is what the worker hands the engine (worker/spec.py).
    stored = spec.model_dump(mode="json")
    assert train_config(stored, architecture=engine.base_model) == engine


# ------------------------------------------------------------------ every API value runs


def _tiny(seed: int = 0):
    return build_model(base_model=TINY, num_classes=3, pretrained=False, seed=seed)


def _train_steps(model, plans, *, optimizer: str = "adamw", scheduler: str = "cosine") -> None:
    """A few optimizer steps through the plans, as the loop takes them."""
    opt = create_optimizer(
        name=optimizer,
        param_groups=trainable_param_groups(model, plans[0]),
        lr=plans[0].lr("head"),
        weight_decay=1e-4,
    )
    factor = create_scheduler(name=scheduler, total_steps=len(plans))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in model.parameters()]
    for step, plan in enumerate(plans):
        apply_plan(model, plan)
        sync_optimizer(opt, model, plan)
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor(step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _runs_strategy(value) -> None:
    blocks = num_blocks(TINY)
    if value == "auto":  # the search runs its candidates: each is a plain strategy
        runs = auto.candidates(learning_rate=1e-2, num_blocks=blocks, pretrained=True)
    else:
        strategy = resolve_strategy(value, base_model=TINY, has_weights=True)
        runs = [{"strategy": strategy, "trainable_blocks": 1, "learning_rate": 1e-2}]
    for run in runs:
        plans = plan_schedule(num_blocks=blocks, epochs=3, **run)
        _train_steps(_tiny(), plans)


def _runs_optimizer(value) -> None:
    plans = plan_schedule(
        strategy="full", num_blocks=num_blocks(TINY), epochs=2, learning_rate=1e-2
    )
    _train_steps(_tiny(), plans, optimizer=value)


def _runs_scheduler(value) -> None:
    factor = create_scheduler(name=value, total_steps=20)
    factors = [factor(step) for step in range(21)]
    assert factors[0] > 0 and all(math.isfinite(f) and 0 <= f <= 1 for f in factors), factors
    plans = plan_schedule(
        strategy="full", num_blocks=num_blocks(TINY), epochs=3, learning_rate=1e-2
    )
    _train_steps(_tiny(), plans, scheduler=value)


def _runs_loss(value) -> None:
    objective = get_task("tabular_regression").objective(
        classes=[], train_targets=torch.tensor([1.0, 2.0, 4.0]), options=TrainConfig(loss=value)
    )
    loss = objective.loss(torch.tensor([[0.5], [0.1], [-2.0]]), torch.tensor([1.0, 2.0, 4.0]))
    assert math.isfinite(float(loss)) and float(loss) > 0


def _runs_class_weights(value) -> None:
    objective = get_task("image_classification").objective(
        classes=["a", "b"],
        train_targets=torch.tensor([0, 0, 0, 1]),
        options=TrainConfig(class_weights=value),
    )
    assert (objective.weight is not None) == (value is not None)
    loss = objective.loss(torch.randn(4, 2), torch.tensor([0, 0, 0, 1]))
    assert math.isfinite(float(loss))


# Each choice field of the API, and how the engine is made to run each of its values.
RUNS = {
    "strategy": _runs_strategy,
    "optimizer": _runs_optimizer,
    "scheduler": _runs_scheduler,
    "loss": _runs_loss,
    "class_weights": _runs_class_weights,
}


def test_every_choice_the_api_offers_is_run_by_the_engine(schema) -> None:
    offered = {
        name: schema_choices(prop)
        for name, prop in schema["properties"].items()
        if [v for v in schema_choices(prop) if v is not None]
    }
    assert offered.keys() == RUNS.keys(), "a choice field without an engine run here"
    assert "onecycle" in offered["scheduler"]
    for name, values in offered.items():
        for value in values:
            validate_config(TrainConfig(**{name: value}))
            RUNS[name](value)


def _near(value: float, integer: bool) -> list[float]:
    if integer:  # (FastAPI's OpenAPI writes an integer's bounds as floats)
        return [int(value) - 1, int(value), int(value) + 1]
    return [math.nextafter(value, -math.inf), value, math.nextafter(value, math.inf)]


def _edge_accepts(name: str, value) -> bool:
    try:
        JobSpec.model_validate({"dataset_id": "ds_1", "base_model": "tiny_cnn", name: value})
    except ValueError:
        return False
    return True


def _engine_accepts(name: str, value) -> bool:
    try:
        validate_config(TrainConfig(**{name: value}))
    except InvalidConfig as exc:
        assert exc.field == name, exc
        return False
    return True


def test_the_edge_and_the_engine_draw_every_bound_at_the_same_value(schema) -> None:
    bounded = {n: p for n, p in schema["properties"].items() if schema_bounds(p)}
    assert bounded.keys() <= DERIVED and len(bounded) >= 15, bounded.keys()
    for name, prop in bounded.items():
        integer = "integer" in {v.get("type") for v in prop.get("anyOf", [prop])}
        for bound in schema_bounds(prop).values():
            for value in _near(bound, integer):
                api, engine = _edge_accepts(name, value), _engine_accepts(name, value)
                assert api == engine, f"{name}={value!r}: API {api}, engine {engine}"
    # Types too: a string is no number for either.
    assert not _edge_accepts("learning_rate", "fast") and not _engine_accepts("learning_rate", "x")


@pytest.mark.parametrize(
    "device, ok",
    [("auto", True), ("cpu", True), ("cuda:1", True), ("tpu", False), ("cuda:x", False)],
)
def test_devices_the_api_takes_are_the_ones_the_engine_reads(device: str, ok: bool) -> None:
    assert _edge_accepts("device", device) is ok
    try:
        validate_config(TrainConfig(device=device))
    except InvalidConfig as exc:
        assert exc.field == "device"
        # A CUDA name is of the right form; this machine may just not have that device.
        assert not ok or "CUDA" in exc.message, exc.message


# ------------------------------------------------------------------ over real HTTP


def test_a_onecycle_job_is_accepted(api, dataset) -> None:
    r = api.post(
        "/v1/jobs",
        json={"dataset_id": dataset["id"], "base_model": "tiny_cnn", "scheduler": "onecycle"},
    )
    assert r.status_code == 202, r.text
    job = api.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["spec"]["scheduler"] == "onecycle"


def test_every_offered_choice_is_accepted_by_post(api, dataset, schema) -> None:
    base = {"dataset_id": dataset["id"], "base_model": "efficientnet_lite0"}
    for name in RUNS:
        for value in schema_choices(schema["properties"][name]):
            r = api.post("/v1/jobs", json={**base, name: value})
            assert r.status_code == 202, (name, value, r.text)
            if value is not None:
                assert r.json()["spec"][name] == value


def test_a_value_out_of_bounds_is_a_422_naming_its_field(api, dataset, schema) -> None:
    base = {"dataset_id": dataset["id"], "base_model": "tiny_cnn"}
    for name, prop in schema["properties"].items():
        bounds = schema_bounds(prop)
        if not bounds:
            continue
        integer = "integer" in {v.get("type") for v in prop.get("anyOf", [prop])}
        step = 1 if integer else 1e-9
        low = bounds.get("minimum", bounds.get("exclusiveMinimum"))
        low = int(low) if integer else low
        value = low - step if "minimum" in bounds else low
        r = api.post("/v1/jobs", json={**base, name: value})
        assert r.status_code == 422, (name, value, r.text)
        assert r.json()["error"]["field"] == name, r.text


def test_more_trainable_blocks_than_the_model_has_is_a_422_before_the_job_is_queued(
    api, dataset
) -> None:
    units = num_blocks("tiny_cnn") + 1
    base = {"dataset_id": dataset["id"], "base_model": "tiny_cnn", "pretrained": False}
    ok = api.post("/v1/jobs", json={**base, "strategy": "full", "trainable_blocks": units})
    assert ok.status_code == 202, ok.text
    r = api.post("/v1/jobs", json={**base, "strategy": "full", "trainable_blocks": units + 1})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "trainable_blocks", r.text
    assert api.get("/v1/jobs").json()["total"] == 1
