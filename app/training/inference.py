"""Load a trained model artifact and predict, with the same eval preset as training."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from PIL import Image

from app.training.api import load_artifact
from app.training.build import build_model
from app.training.errors import InvalidInput
from app.training.presets import EvalPreset, pil_to_uint8


def decode_image(data: bytes) -> Image.Image:
    """Fully decoded RGB image, or InvalidInput for non-images, truncated files and
    decompression bombs (more pixels than PIL's Image.MAX_IMAGE_PIXELS)."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; we refuse from 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decode now: truncation shows up here, not later
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(f"image too large (decompression bomb protection): {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidInput(f"not a readable image: {e}") from e


class Predictor:
    def __init__(
        self,
        *,
        model: torch.nn.Module,
        classes: list[str],
        image_size: int,
        preset: EvalPreset,
        device: torch.device,
        batch_size: int = 64,
    ):
        self.model, self.classes, self.image_size = model, classes, image_size
        self.preset, self.device, self.batch_size = preset, device, batch_size

    @classmethod
    def load(cls, artifact_dir: Path, device: str = "cpu") -> Predictor:
        config, state = load_artifact(artifact_dir)
        model = build_model(
            base_model=config["architecture"],
            num_classes=config["num_classes"],
            pretrained=False,
            state_dict=state,
        )
        dev = torch.device(device)
        model.to(dev).eval()
        norm = config["normalisation"]
        return cls(
            model=model,
            classes=config["classes"],
            image_size=config["image_size"],
            preset=EvalPreset(mean=norm["mean"], std=norm["std"]),
            device=dev,
        )

    def predict_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,S,S) at image_size -> class probabilities (N, C) on the CPU."""
        out = []
        with torch.inference_mode():
            for chunk in batch.split(self.batch_size):
                x = self.preset(chunk.to(self.device))
                out.append(self.model(x).float().softmax(1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def predict_images(self, images: list[Image.Image], top_k: int = 1) -> list[dict]:
        """[{label, score, top_k: [{label, score}]}] in input order."""
        if not images:
            return []
        batch = torch.stack([pil_to_uint8(img, self.image_size) for img in images])
        probs = self.predict_tensor(batch)
        k = max(1, min(top_k, len(self.classes)))
        scores, idx = probs.topk(k, dim=1)
        out = []
        for s_row, i_row in zip(scores.tolist(), idx.tolist(), strict=True):
            ranked = [
                {"label": self.classes[i], "score": s} for s, i in zip(s_row, i_row, strict=True)
            ]
            out.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
        return out
