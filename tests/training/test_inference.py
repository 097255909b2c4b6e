"""Predictor round trip from the artifact dir; decode_image refuses bad bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.training import inference
from app.training.api import TrainConfig, train
from app.training.errors import InvalidInput
from app.training.inference import Predictor, decode_image, load_predictor
from app.training.presets import EvalPreset


def test_predictor_round_trip(digits_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy="full",
        epochs=2,
        image_size=32,
        learning_rate=0.05,
        batch_size=16,
        device="cpu",
    )
    result = train(
        config=config, dataset_dir=digits_small, work_dir=tmp_path / "w", cache_dir=tmp_path / "c"
    )
    files = sorted(p.name for p in result.artifact_dir.iterdir())
    assert files == ["config.json", "model.safetensors"]
    meta = json.loads((result.artifact_dir / "config.json").read_text())
    assert meta["classes"] == result.classes and meta["image_size"] == 32

    predictor = Predictor.load(result.artifact_dir)
    manifest = json.loads((digits_small / "manifest.json").read_text())
    tests = [s for s in manifest["samples"] if s["split"] == "test"]
    images = [decode_image((digits_small / s["path"]).read_bytes()) for s in tests]
    predictions = predictor.predict_images(images, top_k=3)
    assert len(predictions) == len(images)
    for p in predictions:
        assert p["label"] in result.classes and len(p["top_k"]) == 3
        assert p["top_k"][0] == {"label": p["label"], "score": p["score"]}
        scores = [t["score"] for t in p["top_k"]]
        assert scores == sorted(scores, reverse=True)
    # same answers as training's own test evaluation, in input order
    accuracy = sum(
        p["label"] == str(s["label"]) for p, s in zip(predictions, tests, strict=True)
    ) / len(tests)
    assert accuracy == pytest.approx(result.metrics["accuracy"])
    reversed_preds = predictor.predict_images(images[::-1])
    assert [p["label"] for p in reversed_preds] == [p["label"] for p in predictions][::-1]
    probs = predictor.predict_tensor(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert probs.shape == (2, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))

    # The cache's loader reads the weights once (it used to read them, then have
    # Predictor.load read them again), and gives the same answers.
    reads = []
    real = inference.load_artifact

    def counted(artifact_dir):
        reads.append(artifact_dir)
        return real(artifact_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "load_artifact", counted)
        loaded = load_predictor(result.artifact_dir, accelerate=False)
    assert len(reads) == 1, reads
    assert loaded.predict_images(images, top_k=3) == predictions


@pytest.mark.slow
@pytest.mark.parametrize("base_model", ["tiny_cnn", "efficientnet_lite0"])
def test_accelerated_predictor_runs_the_fastest_checked_runtime(
    base_model: str, tmp_path, monkeypatch
) -> None:
    """accelerate() picks a runtime by a timed trial among those that match eager (ONNX
    Runtime where installed), remembers the choice, and answers as eager does at batch
    sizes other than the export's."""
    from app.training import runtime
    from app.training.build import build_model, get_base_model

    monkeypatch.setenv("FINETUNE_RUNTIME_DIR", str(tmp_path / "runtime"))
    runtime.forget_choices()
    spec = get_base_model(base_model)
    torch.manual_seed(0)
    model = build_model(base_model=base_model, num_classes=5, pretrained=False).eval()

    def predictor() -> Predictor:
        return Predictor(
            model=model,
            classes=list("abcde"),
            image_size=40,
            preset=EvalPreset(mean=spec.mean, std=spec.std),
            device=torch.device("cpu"),
        )

    batch = torch.randint(0, 256, (7, 3, 40, 40), dtype=torch.uint8)
    first = predictor()
    eager = first.predict_tensor(batch)
    assert first.runtime == "eager"
    first.accelerate(tmp_path / "model-runtime")
    info = first.runtime_info
    assert first.runtime == info["runtime"] and info["chosen_by"] == "trial", info
    assert set(info["trial_images_per_s"]) >= {"eager", "eager_channels_last", "torchscript"}
    if runtime.onnxruntime_available():
        assert "onnxruntime" in info["trial_images_per_s"], info
        assert list((tmp_path / "model-runtime").glob("*.onnx"))
    best = max(info["trial_images_per_s"], key=info["trial_images_per_s"].get)
    assert first.runtime == best, info
    for n in (1, 2, 7):  # exported at batch 2: other batch sizes give the same answers
        torch.testing.assert_close(first.predict_tensor(batch[:n]), eager[:n], atol=1e-4, rtol=0)
    # ONNX Runtime runs one-thread sessions side by side, and a pass alone on a session
    # of the same export with every thread; the other runtimes use every thread anyway.
    if first.runtime == "onnxruntime":
        assert first.parallel_runs == 2, info
        assert (first.forward_alone is None) == ("alone_rejected" in info), info
    if first.forward_alone is not None:
        assert info["alone_threads"] == 2, info
        for n in (1, 7):
            alone = first.predict_tensor(batch[:n], alone=True)
            torch.testing.assert_close(alone, eager[:n], atol=1e-4, rtol=0)
    if first.runtime != "onnxruntime":
        assert first.parallel_runs == 1 and first.forward_alone is None
    # A second load of the same architecture and size reuses the choice: no trial.
    second = predictor().accelerate(tmp_path / "model-runtime")
    assert second.runtime == first.runtime
    assert second.runtime_info["chosen_by"] == "remembered", second.runtime_info
    choices = json.loads((tmp_path / "runtime" / "choices.json").read_text())
    assert first.runtime in choices.values()
    assert first.model is model  # exports still use the eager model


def png_bytes(size: tuple[int, int] = (20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_image_accepts_a_png() -> None:
    img = decode_image(png_bytes())
    assert img.mode == "RGB" and img.size == (20, 20)


@pytest.mark.parametrize("data", [b"", b"not an image at all", png_bytes()[:60]])
def test_decode_image_rejects_garbage_and_truncated(data: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_image(data)
    assert info.value.code == "invalid_input"


def test_decode_image_rejects_decompression_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    data = png_bytes((100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 1x-2x over: PIL only warns
    with pytest.raises(InvalidInput, match="too large"):
        decode_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # more than 2x: PIL raises
    with pytest.raises(InvalidInput, match="too large"):
        decode_image(data)


def test_a_large_jpeg_is_decoded_at_reduced_scale_the_same_in_predict_and_training(
    tmp_path: Path,
) -> None:
    """draft(): libjpeg decodes a 2400x1800 JPEG for a 64 px model at 1/8 scale, and the
    training decode gives the model exactly the same pixels as predict does."""
    from app.training.data import _decode_all
    from app.training.presets import pil_to_uint8

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((2400, 1800)).save(buf, format="JPEG", quality=90)
    (tmp_path / "a.jpg").write_bytes(buf.getvalue())
    decoded = decode_image(buf.getvalue(), 64)
    assert decoded.size == (300, 225)  # 1/8: still covers 64 x 64
    assert decode_image(buf.getvalue()).size == (2400, 1800)  # no size: full decode
    served = pil_to_uint8(decoded, 64)
    trained = _decode_all(tmp_path, [{"path": "a.jpg"}], 64)[0]
    assert torch.equal(served, trained)
