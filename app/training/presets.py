"""One preset for training and one for evaluation; inference reuses the eval preset.

Images are decoded once to square uint8 tensors of `image_size` (see data.py), so both
presets take a uint8 batch (N, 3, S, S) and return a normalised float batch. Decoding a
PIL image for prediction goes through the same `pil_to_uint8` that ingestion used, so a
served model sees pixels prepared exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pil_to_uint8(image: Image.Image, image_size: int) -> torch.Tensor:
    """Upright (EXIF orientation applied, as phones store photos sideways), RGB, square
    resize (no crop: small datasets often have the object off-centre)."""
    rgb = (
        ImageOps.exif_transpose(image)
        .convert("RGB")
        .resize((image_size, image_size), Image.Resampling.BILINEAR)
    )
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


class EvalPreset:
    """uint8 (N,3,S,S) -> normalised float32."""

    def __init__(self, *, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(batch.device), self.std.to(batch.device)
        return (batch.float().div_(255.0) - mean) / std


class TrainPreset(EvalPreset):
    """Eval preset plus, when `augment`, a light random resized crop and horizontal flip.

    Uses the global torch RNG, which the loop seeds and checkpoints, so an augmented run
    resumes to the same weights.
    """

    def __init__(
        self, *, mean: Sequence[float], std: Sequence[float], image_size: int, augment: bool
    ):
        super().__init__(mean=mean, std=std)
        self.augment = augment
        self._aug = v2.Compose(
            [
                v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.augment:
            # Per sample, so every image gets its own crop.
            batch = torch.stack([self._aug(img) for img in batch])
        return super().__call__(batch)
