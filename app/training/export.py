"""Export a trained image model for use outside the service.

TorchScript and ONNX exports are self-contained: they take a float32 batch (N, 3, S, S)
of RGB values in [0, 1] at the model's image size, normalise it themselves and return
the task's output (tasks.OUTPUTS): class probabilities (N, C) in the order of
config.json's `classes` for a classification ("probabilities"), sigmoid scores (N, L)
for multi-label ("scores"; config.json's `thresholds` turn them into labels), the
de-standardised values (N, 1) for regression ("values").
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from app.training import artifact, atomic, runtime
from app.training.errors import InvalidInput
from app.training.inference import Predictor
from app.training.tasks import Modality, get_task

FORMATS = ("safetensors", "torchscript", "onnx")
FILENAMES = {
    "safetensors": artifact.WEIGHTS_FILE,
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
}


class _Exported(nn.Module):
    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor, output: nn.Module):
        super().__init__()
        self.model, self.output = model, output
        self.register_buffer("mean", mean.view(1, 3, 1, 1).clone())
        self.register_buffer("std", std.view(1, 3, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.model((x - self.mean) / self.std))


def export(artifact_dir: Path, fmt: str) -> Path:
    """The exported file for `fmt`, built once and kept beside the model."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}", code="invalid_format")
    artifact_dir = Path(artifact_dir)
    target = artifact_dir / FILENAMES[fmt]
    if target.exists():
        return target
    config = artifact.read_config(artifact_dir)
    task = get_task(config.get("task"))
    if task.modality != Modality.IMAGE:
        # Text and tabular models need their tokenizer / preprocessing beside the graph.
        raise InvalidInput(
            f"a {task.name} model exports as safetensors (with config.json) only",
            code="invalid_format",
        )
    predictor = Predictor.load(artifact_dir, device="cpu")
    wrapped = _Exported(
        predictor.model.float().eval(),
        predictor.preset.mean,
        predictor.preset.std,
        task.output.layer(config),
    ).eval()
    example = torch.rand(1, 3, predictor.image_size, predictor.image_size)
    buf = io.BytesIO()
    with runtime.TRACE_LOCK, torch.no_grad():  # never beside another trace in the process
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapped, example), buf)
        else:
            # The TorchScript-based exporter: needs only the `onnx` package, no onnxscript.
            torch.onnx.export(
                wrapped,
                (example,),
                buf,
                dynamo=False,
                input_names=["images"],
                output_names=[task.output.name],
                opset_version=17,
                dynamic_axes={"images": {0: "batch"}, task.output.name: {0: "batch"}},
            )
    atomic.write_bytes(target, buf.getvalue())  # concurrent exporters: same bytes
    return target
