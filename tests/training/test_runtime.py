"""runtime.py: the fastest runtime that agrees with eager, its fallbacks, the cached ONNX
export and choice; the feature cache and training use it."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from app.training import features, runtime
from app.training.build import build_model, get_base_model
from app.training.presets import EvalPreset

CUDA = torch.cuda.is_available()
needs_ort = pytest.mark.skipif(
    not runtime.onnxruntime_available(), reason="onnxruntime is not installed"
)


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FINETUNE_RUNTIME_DIR", str(tmp_path / "runtime"))
    runtime.forget_choices()
    yield
    runtime.forget_choices()


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


class _Branchy(nn.Module):
    """Eager takes a branch by the data; an export traces only the example's branch, so
    it disagrees with eager on inputs that take the other one."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if bool(x.sum() > 0):
            return y * 2
        return y - 3


@needs_ort
def test_a_runtime_that_disagrees_with_eager_is_rejected_logged_and_recorded(
    tmp_path: Path, caplog
):
    torch.manual_seed(0)
    module = _Branchy().eval()
    example = torch.ones(2, 4)  # the positive branch
    check = -torch.ones(3, 4)  # the other one
    with caplog.at_level(logging.WARNING, logger="app.training.runtime"):
        runner = runtime.prepare(
            module, example=example, check=check, candidates=(runtime.ONNX,), cache_dir=tmp_path
        )
    assert runner.name == runtime.EAGER
    assert "differs from eager" in runner.info["rejected"][runtime.ONNX], runner.info
    assert "runtime onnxruntime rejected" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(runner(check), module(check))


def test_without_onnxruntime_the_fastest_other_runtime_is_chosen(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    assert not runtime.onnxruntime_available()
    model = build_model(base_model="tiny_cnn", num_classes=3, pretrained=False).eval()
    x = torch.rand(4, 3, 32, 32)
    runner = runtime.prepare(model, example=x[:2], check=x, cache_dir=tmp_path)
    assert runner.name in (runtime.EAGER, runtime.EAGER_CL), runner.info
    assert "not installed" in runner.info["rejected"][runtime.ONNX]
    assert set(runner.info["trial_images_per_s"]) == {runtime.EAGER, runtime.EAGER_CL}
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)


@needs_ort
@pytest.mark.parametrize("base_model", ["tiny_cnn", "efficientnet_lite0"])
def test_feature_cache_on_the_chosen_runtime_matches_eager_and_reuses_its_export(
    base_model: str, tmp_path: Path
):
    spec = get_base_model(base_model)
    preset = EvalPreset(mean=spec.mean, std=spec.std)
    model = build_model(base_model=base_model, num_classes=3, pretrained=False).eval()
    images = _images(40, 32)
    level = 2

    def run(min_samples: int) -> tuple[list[torch.Tensor], dict]:
        info: dict = {}
        out = features.cache_features(
            model=model,
            splits=[images[:30], images[30:]],
            level=level,
            preset=preset,
            to_device=lambda t: t,
            batch_size=16,
            limit_bytes=1 << 30,
            check_stop=lambda: None,
            amp=contextlib.nullcontext(),
            info=info,
            runtime_min_samples=min_samples,
        )
        return out, info

    eager, eager_info = run(min_samples=10_000)  # too few inputs: stays eager, no trial
    assert eager_info["runtime"] == "eager" and "chosen_by" not in eager_info
    fast, info = run(min_samples=0)
    assert info["chosen_by"] == "trial", info
    assert runtime.ONNX in info["trial_images_per_s"], info
    assert info["runtime"] == max(info["trial_images_per_s"], key=info["trial_images_per_s"].get)
    for a, b in zip(fast, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    cache = tmp_path / "runtime"
    exported = {p: p.stat().st_mtime_ns for p in cache.glob("*.onnx")}
    assert len(exported) == 1, list(cache.iterdir())
    choices = json.loads((cache / "choices.json").read_text())
    assert info["runtime"] in choices.values()
    # Once known, the same prefix reuses the choice and the file: no trial, no export.
    _, again = run(min_samples=0)
    assert again["runtime"] == info["runtime"] and again["chosen_by"] == "remembered"
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.onnx")} == exported
    # A different normalisation is a different export (the preset is not a weight).
    other = features.frozen_runner(
        model, level, EvalPreset(mean=(0, 0, 0), std=(1, 1, 1)), images[:8]
    )
    assert other.info["runtime"]
    if other.name == runtime.ONNX or info["runtime"] == runtime.ONNX:
        assert len(list(cache.glob("*.onnx"))) == 2


def test_training_memory_format_is_measured_once_and_leaves_the_model_alone(tmp_path: Path):
    model = build_model(base_model="tiny_cnn", num_classes=3, pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shape = (4, 3, 32, 32)
    assert runtime.train_channels_last(model, shape, work=10) is False  # too little work
    assert not (tmp_path / "runtime" / "choices.json").exists()
    chosen = runtime.train_channels_last(model, shape, work=10**6)
    choices = json.loads((tmp_path / "runtime" / "choices.json").read_text())
    [(key, name)] = choices.items()
    assert key.startswith("train/cpu/") and name == ("eager_channels_last" if chosen else "eager")
    for k, v in model.state_dict().items():  # weights and BatchNorm statistics untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())
    assert runtime.train_channels_last(model, shape, work=10**6) is chosen
    # Too little work for a trial, once one was run: its choice, not the prior.
    assert runtime.train_channels_last(model, shape, work=10) is chosen
    # No trial yet and too little work: the prior by input size (channels_last from
    # CL_PRIOR_MIN_SIDE px), and nothing is written.
    big = (2, 3, runtime.CL_PRIOR_MIN_SIDE, runtime.CL_PRIOR_MIN_SIDE)
    assert runtime.train_channels_last(model, big, work=10) is True
    assert len(json.loads((tmp_path / "runtime" / "choices.json").read_text())) == 1


def test_training_precision_is_the_faster_of_a_trial_remembered_and_draws_no_random_numbers(
    tmp_path: Path,
):
    """train_autocast: bf16 autocast for training steps on the CPU only where a timed
    trial of the step says it is faster; the choice is remembered per key, too little
    work gets fp32 with no trial, and the trial leaves torch's random state alone."""
    calls: list[bool] = []

    def step(slow_one: bool):
        def run(bf16: bool) -> None:
            calls.append(bf16)
            torch.rand(3)  # as dropout draws
            time.sleep(0.02 if bf16 == slow_one else 0.0)

        return run

    assert runtime.train_autocast("k", step(False), work=10) is False  # too little work
    assert calls == [] and not (tmp_path / "runtime" / "choices.json").exists()
    state = torch.random.get_rng_state()
    assert runtime.train_autocast("k", step(slow_one=False), work=10**6) is True
    assert torch.equal(torch.random.get_rng_state(), state)
    assert set(calls) == {True, False}
    assert runtime.train_autocast("other", step(slow_one=True), work=10**6) is False
    choices = json.loads((tmp_path / "runtime" / "choices.json").read_text())
    assert sorted(v for k, v in choices.items() if k.startswith("train-amp/cpu/")) == [
        "bf16",
        "fp32",
    ]
    calls.clear()  # remembered: no second trial, whatever the step would say now
    assert runtime.train_autocast("k", step(slow_one=True), work=10**6) is True
    assert runtime.train_autocast("k", step(slow_one=True), work=10) is True
    assert calls == []
    assert runtime.train_autocast("k", step(False), device="meta", work=10**6) is False


def test_a_job_reports_the_precision_its_training_steps_ran_in(tmp_path: Path):
    """A job with enough work runs the trial on its own training step, and every epoch
    reports the precision the trial chose (remembered in the runtime choices)."""
    from app.training.api import TrainConfig, train
    from tests.training.conftest import make_digits_dataset

    digits = make_digits_dataset(tmp_path / "d", train_per_class=20, test_per_class=2, size=32)
    config = TrainConfig(
        base_model="tiny_cnn", strategy="full", epochs=12, image_size=32, device="cpu"
    )
    result = train(config=config, dataset_dir=digits, work_dir=tmp_path / "w", cache_dir=tmp_path)
    choices = json.loads((tmp_path / "runtime" / "choices.json").read_text())
    [chosen] = [v for k, v in choices.items() if k.startswith("train-amp/cpu/")]
    epochs = [h for h in result.history if h.get("stage") != "probe"]
    assert epochs and {h["precision"] for h in epochs} == {chosen}


@pytest.mark.skipif(not CUDA, reason="CUDA is not available on this machine")
def test_on_cuda_the_runtime_is_eager_channels_last_under_bf16_autocast():
    model = build_model(base_model="tiny_cnn", num_classes=3, pretrained=False).cuda().eval()
    x = torch.rand(4, 3, 32, 32, device="cuda")
    runner = runtime.prepare(model, example=x[:2], device="cuda")
    assert runner.name == runtime.EAGER_CL
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        got = runner(x)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(got.float(), expected, atol=5e-2, rtol=5e-2)
    assert runtime.train_channels_last(model, (4, 3, 32, 32), device="cuda") is True


@needs_ort
def test_an_input_of_another_shape_runs_eager_rather_than_fail(tmp_path: Path):
    """An export is for the example's shape past the batch axis (text splits are padded
    to their own longest text): another shape falls back to eager for that call."""
    model = build_model(base_model="tiny_cnn", num_classes=3, pretrained=False).eval()
    x = torch.rand(4, 3, 32, 32)
    runner = runtime.prepare(
        model, example=x[:2], check=x, candidates=(runtime.ONNX,), cache_dir=tmp_path
    )
    assert runner.name == runtime.ONNX
    other = torch.rand(2, 3, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(runner(other), model(other))
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)


@needs_ort
def test_one_thread_sessions_side_by_side_have_an_all_thread_twin_for_a_pass_alone(
    tmp_path: Path,
):
    """Predict runs one-thread sessions side by side; a pass that runs alone takes a
    second session of the same export on as many threads, checked against eager too,
    where it runs one input faster (measured: else it is left out, saying why)."""
    model = build_model(base_model="efficientnet_lite0", num_classes=3, pretrained=False).eval()
    x = torch.rand(4, 3, 160, 160)
    runner = runtime.prepare(
        model,
        example=x[:2],
        check=x,
        candidates=(runtime.ONNX,),
        cache_dir=tmp_path,
        threads=1,
        parallel=2,
    )
    assert runner.name == runtime.ONNX and runner.info["threads"] == 1
    assert len(list(tmp_path.glob("*.onnx"))) == 1  # one export serves both sessions
    info = runner.info
    if runner.alone is None:  # this machine runs one input faster on one thread
        assert info["alone_rejected"].startswith("not faster for one input"), info
    else:
        assert info["alone_threads"] == 2 and info["alone_ms"]["alone"] < info["alone_ms"]["one"]
        other = torch.rand(2, 3, 40, 40)  # another shape runs eager, as on the first session
        with torch.inference_mode():
            torch.testing.assert_close(runner.alone(x), model(x), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(runner.alone(other), model(other))
    runtime.forget_choices()
    plain = runtime.prepare(
        model, example=x[:2], check=x, candidates=(runtime.ONNX,), cache_dir=tmp_path, threads=2
    )
    assert plain.alone is None and "alone_threads" not in plain.info


@needs_ort
def test_a_head_only_job_reports_the_runtime_of_its_frozen_pass(
    digits_small: Path, tmp_path: Path, monkeypatch
):
    from tests.training.test_feature_cache import run

    _, _, eager_result, _ = run(digits_small, tmp_path / "small")  # too little work: eager
    assert {h["runtime"] for h in eager_result.history} == {"eager"}
    monkeypatch.setattr(features, "RUNTIME_MIN_PIXELS", 0)
    _, _, result, _ = run(digits_small, tmp_path / "big")
    chosen = json.loads((tmp_path / "runtime" / "choices.json").read_text())
    assert {h["runtime"] for h in result.history} <= set(chosen.values()), result.history
    assert result.history[0]["runtime"] in ("onnxruntime", "eager", "eager_channels_last")
    frozen = result.history[0]["frozen_pass"]
    assert frozen["seconds"] > 0 and frozen["prepare_seconds"] >= 0, frozen
    # The service's default head-only job is the probe alone: its one history entry says
    # which runtime its frozen pass ran on, and how long the pass took.
    _, _, probed, _ = run(digits_small, tmp_path / "probe", probe=True, refit=True)
    assert [h.get("stage") for h in probed.history] == ["probe"], probed.history
    assert probed.history[0]["runtime"] in set(chosen.values()), probed.history
    assert probed.history[0]["frozen_pass"]["seconds"] > 0, probed.history
    # Same features either way: the same probe learns the same head.
    assert result.best_val_score == pytest.approx(eager_result.best_val_score, abs=0.1)


def test_large_images_run_in_batches_of_bounded_pixels():
    """At 224 px the frozen pass runs batches of at most BATCH_MAX_PIXELS input pixels
    (memory-bound beyond), whatever the eval batch size; at 32 px the whole batch."""
    model = build_model(base_model="tiny_cnn", num_classes=3, pretrained=False).eval()
    seen: list[int] = []
    model.stem.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    spec = get_base_model("tiny_cnn")
    for size, expect in ((224, features.BATCH_MAX_PIXELS // (224 * 224)), (32, 40)):
        seen.clear()
        out = features.cache_features(
            model=model,
            splits=[_images(40, size)],
            level=model.pooled_level,
            preset=EvalPreset(mean=spec.mean, std=spec.std),
            to_device=lambda t: t,
            batch_size=256,
            limit_bytes=1 << 30,
            check_stop=lambda: None,
            amp=contextlib.nullcontext(),
            runtime_min_samples=10_000,  # eager: the hook sees every batch
        )
        assert max(seen) == expect and sum(seen) == 40, (size, seen)
        assert out is not None and len(out[0]) == 40
