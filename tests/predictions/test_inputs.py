"""inputs.prepared_images: a request's files decoded and resized, on every core at once,
answered in the files' order, the first unreadable file named."""

from __future__ import annotations

import threading

import pytest
import torch

from app.predictions.inputs import PARALLEL_MIN_BYTES, Upload, prepared_images
from app.training.build import build_model, get_base_model
from app.training.errors import EngineError
from app.training.inference import Predictor, decode_image
from app.training.presets import EvalPreset, pil_to_uint8
from tests.helpers import digit_images, png_bytes


class ThreadNoting(Predictor):
    """The real image predictor, noting which threads prepared its inputs."""

    threads: set[str]

    def check(self, inputs: list) -> list[torch.Tensor]:
        self.threads.add(threading.current_thread().name)
        return super().check(inputs)


def _predictor() -> ThreadNoting:
    spec = get_base_model("tiny_cnn")
    predictor = ThreadNoting(
        model=build_model(base_model="tiny_cnn", num_classes=3, pretrained=False).eval(),
        classes=list("abc"),
        image_size=24,
        preset=EvalPreset(mean=spec.mean, std=spec.std),
        device=torch.device("cpu"),
    )
    predictor.threads = set()
    return predictor


def test_the_files_of_one_request_are_prepared_side_by_side_in_their_order() -> None:
    predictor = _predictor()
    images = enumerate(digit_images(2, size=224))  # 20 PNGs of ~11 KB, 224 x 224
    files = [Upload(f"{i}.png", png_bytes(img)) for i, (_, img) in images]
    assert sum(len(f.data) for f in files) >= PARALLEL_MIN_BYTES
    got = prepared_images(predictor, files)
    expected = [pil_to_uint8(decode_image(f.data, 24), 24) for f in files]
    assert len(got) == len(expected) == 20
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert all(name.startswith("decode") for name in predictor.threads), predictor.threads
    # One file, or small ones, are prepared where the request already runs: no hand-off.
    small = [Upload(f"{i}.png", png_bytes(img)) for i, (_, img) in enumerate(digit_images(1))]
    assert sum(len(f.data) for f in small) < PARALLEL_MIN_BYTES
    for some in (files[:1], small):
        predictor.threads.clear()
        prepared_images(predictor, some)
        assert predictor.threads == {threading.current_thread().name}


def test_the_first_unreadable_file_in_order_is_named() -> None:
    png = png_bytes(next(digit_images(1))[1])
    files = [Upload("ok.png", png), Upload("bad.png", b"not an image"), Upload("t.png", png[:40])]
    with pytest.raises(EngineError) as info:
        prepared_images(_predictor(), files)
    assert info.value.field == "files" and "'bad.png'" in info.value.message
    assert "t.png" not in info.value.message
