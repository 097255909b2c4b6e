"""The 1000 ImageNet class names, for checking that pretrained weights load right."""

from __future__ import annotations

from torchvision.models._meta import _IMAGENET_CATEGORIES


def imagenet_classes() -> list[str]:
    return list(_IMAGENET_CATEGORIES)
