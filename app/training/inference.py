"""Load a trained model artifact and predict, with the same eval preset as training.

`load_predictor(artifact_dir)` picks the predictor for the artifact's task: images
(`Predictor`), text (`TextPredictor`, with the tokenizer copied into the artifact) or
tabular (`TabularPredictor`, with the preprocessing from config.json). Each has
`check(inputs)` (validate a request's inputs, raising InvalidInput naming the problem;
run in the request, before batching) and `predict(inputs, top_k)`.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch
from PIL import Image

from app.training import tabular, text
from app.training.api import load_artifact
from app.training.build import build_model
from app.training.errors import InvalidInput
from app.training.presets import EvalPreset, pil_to_uint8

log = logging.getLogger(__name__)


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
        # What predict runs on a uint8 batch: the preset then the eager model, or after
        # optimise() one frozen graph of both.
        self.forward = _Normalised(model, preset)

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

    def optimise(self) -> Predictor:
        """Serve a frozen TorchScript graph of the eval model: BatchNorm folded into the
        convolutions and no Python per layer (on 2 CPU cores: ~1.9x faster at batch 1,
        ~1.4x at batch 16). Kept only if it agrees with the eager model on a batch size
        other than the one traced; otherwise predict stays eager."""
        size, eager = self.image_size, self.forward
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarning, deprecation notices
                example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
                traced = torch.jit.trace(eager, example.to(self.device))
                graph = torch.jit.freeze(traced.eval())
                probe = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
                expected, got = eager(probe.to(self.device)), graph(probe.to(self.device))
            if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-3):
                raise ValueError(f"traced output differs by {(got - expected).abs().max():.2e}")
        except Exception as exc:  # noqa: BLE001 - any tracing failure: stay eager
            log.warning("predict runs the eager model: tracing failed (%s)", exc)
            return self
        self.forward = graph
        return self

    def predict_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N,3,S,S) at image_size -> class probabilities (N, C) on the CPU."""
        out = []
        with torch.inference_mode():
            for chunk in batch.split(self.batch_size):
                out.append(self.forward(chunk.to(self.device)).float().softmax(1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def predict_images(self, images: list[Image.Image], top_k: int = 1) -> list[dict]:
        """[{label, score, top_k: [{label, score}]}] in input order."""
        return self.predict(self.check(images), top_k)

    task = "image_classification"

    def check(self, inputs: list) -> list[torch.Tensor]:
        """Decoded images -> uint8 (3, S, S) tensors at the model's size, as in training
        (done per request, so the batch's forward pass does nothing else)."""
        if not all(isinstance(x, Image.Image) for x in inputs):
            raise InvalidInput("an image model takes images (multipart 'files')")
        return [pil_to_uint8(img, self.image_size) for img in inputs]

    def predict(self, inputs: list[torch.Tensor], top_k: int = 1) -> list[dict]:
        """Inputs from check() -> [{label, score, top_k: [{label, score}]}] in order."""
        if not inputs:
            return []
        return rank(self.predict_tensor(torch.stack(inputs)), self.classes, top_k)


class _Normalised(torch.nn.Module):
    """uint8 images -> the eval preset -> the model's logits, as one module to trace."""

    def __init__(self, model: torch.nn.Module, preset: EvalPreset):
        super().__init__()
        self.model, self.preset = model, preset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preset(x))


def rank(probs: torch.Tensor, classes: list[str], top_k: int) -> list[dict]:
    """Class probabilities (N, C) -> [{label, score, top_k: [{label, score}]}]."""
    k = max(1, min(top_k, len(classes)))
    scores, idx = probs.topk(k, dim=1)
    out = []
    for s_row, i_row in zip(scores.tolist(), idx.tolist(), strict=True):
        ranked = [{"label": classes[i], "score": s} for s, i in zip(s_row, i_row, strict=True)]
        out.append({"label": ranked[0]["label"], "score": ranked[0]["score"], "top_k": ranked})
    return out


class _TensorPredictor:
    """Shared by text and tabular: encode the inputs to one tensor, forward in chunks."""

    task = ""

    def __init__(self, *, model: torch.nn.Module, classes: list[str], device: torch.device):
        self.model, self.classes, self.device, self.batch_size = model, classes, device, 64

    def encode(self, inputs: list) -> torch.Tensor:
        raise NotImplementedError

    def check(self, inputs: list) -> list:
        raise NotImplementedError

    def predict(self, inputs: list, top_k: int = 1) -> list[dict]:
        if not inputs:
            return []
        x = self.encode(inputs)
        out = []
        with torch.inference_mode():
            for chunk in x.split(self.batch_size):
                out.append(self.model(chunk.to(self.device)).float().softmax(1).cpu())
        return rank(torch.cat(out), self.classes, top_k)


class TextPredictor(_TensorPredictor):
    task = text.TASK

    def __init__(self, *, tokenizer: text.TextTokenizer, **kw):
        super().__init__(**kw)
        self.tokenizer = tokenizer
        self.batch_size = 32

    def check(self, inputs: list) -> list:
        return text.check_texts(inputs)

    def encode(self, inputs: list) -> torch.Tensor:
        return self.tokenizer(inputs)


class TabularPredictor(_TensorPredictor):
    task = tabular.TASK

    def __init__(self, *, preprocessing: dict, **kw):
        super().__init__(**kw)
        self.preprocessing = preprocessing
        self.columns = [f["column"] for f in preprocessing["features"]]

    def check(self, inputs: list) -> list:
        """Rows are encoded here (in the request): errors name the row and column."""
        return list(tabular.encode_rows(self.preprocessing, inputs, strict=True))

    def encode(self, inputs: list) -> torch.Tensor:
        return torch.stack(inputs)


def load_predictor(
    artifact_dir: Path, device: str = "cpu"
) -> Predictor | TextPredictor | TabularPredictor:
    """The predictor for the artifact's task."""
    config, state = load_artifact(artifact_dir)
    task = config.get("task", "image_classification")
    if task == "image_classification":
        return Predictor.load(artifact_dir, device=device).optimise()
    model = build_model(
        base_model=config["architecture"],
        num_classes=config["num_classes"],
        pretrained=False,
        state_dict=state,
        num_inputs=config.get("num_inputs"),
    )
    dev = torch.device(device)
    model.to(dev).eval()
    common = {"model": model, "classes": config["classes"], "device": dev}
    if task == text.TASK:
        tokenizer = text.TextTokenizer(
            Path(artifact_dir) / config["tokenizer"], config["max_length"]
        )
        return TextPredictor(tokenizer=tokenizer, **common)
    if task == tabular.TASK:
        return TabularPredictor(preprocessing=config["preprocessing"], **common)
    raise InvalidInput(f"unknown model task {task!r}")
