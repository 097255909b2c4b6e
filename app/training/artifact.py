"""A trained model on disk: the one place that writes and reads a model directory.

    <model dir>/
      config.json         format, task, architecture, classes, head size, and per
                          modality what inference needs (ARTIFACT_FIELDS): image size
                          and normalisation, the tokenizer's folder and max length, or
                          the tabular preprocessing and hidden layers (`hidden`, absent
                          from older models: tabular.HIDDEN); a multi-label model's
                          thresholds, a regression's target mean and std (the task's
                          `extra`)
      model.safetensors   the whole state dict (never a pickle)
      tokenizer/          text models: a copy of the tokenizer files
      runtime/            written later by predict: its ONNX export (runtime.py)
      model.onnx, ...     written later by export.py

Everything inference needs is here, with no base-weights package. The directory is
written beside its place and renamed into it (atomic.py), so a reader never sees half.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from app.training import atomic, tabular, text
from app.training.build import TransferModel, get_base_model
from app.training.tasks import Modality, get_task

ARTIFACT_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
RUNTIME_DIR = "runtime"


def save_artifact(
    artifact_dir: Path,
    *,
    model: TransferModel,
    base_model: str,
    classes: list[str],
    image_size: int,
    task: str = "image_classification",
    meta: dict | None = None,
    max_length: int = text.DEFAULT_MAX_LENGTH,
    extra: dict | None = None,
) -> Path:
    """Write the model directory (see above); `meta` is the loader's (the tokenizer of
    a text dataset, the preprocessing of a tabular one), `extra` the task's."""
    spec = get_base_model(base_model)
    meta = meta or {}
    with atomic.atomic_dir(artifact_dir) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, tmp / WEIGHTS_FILE)
        config = {
            "format": ARTIFACT_FORMAT,
            "task": task,
            "architecture": base_model,
            "base_model": base_model,
            "num_classes": get_task(task).head_size(classes),
            "classes": classes,
            **(extra or {}),
        }
        config.update(
            ARTIFACT_FIELDS[get_task(task).modality](
                tmp,
                spec=spec,
                model=model,
                meta=meta,
                image_size=image_size,
                max_length=max_length,
            )
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return Path(artifact_dir)


def read_config(artifact_dir: Path) -> dict:
    """config.json of a model directory."""
    return json.loads((Path(artifact_dir) / CONFIG_FILE).read_text())


def load_artifact(artifact_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, state dict) of a model trained here: the `init_state` for a job on
    `"model:<id>"` (pass config["architecture"] as the job's base_model)."""
    return read_config(artifact_dir), load_file(Path(artifact_dir) / WEIGHTS_FILE)


def tokenizer_dir(artifact_dir: Path, config: dict) -> Path:
    return Path(artifact_dir) / config["tokenizer"]


def runtime_dir(artifact_dir: Path) -> Path:
    """Where a model's ONNX export for predict is kept: beside the model."""
    return Path(artifact_dir) / RUNTIME_DIR


# Per modality: what config.json carries for inference beside the weights.


def _image_fields(
    tmp: Path, *, spec, model: TransferModel, meta: dict, image_size: int, max_length: int
) -> dict:
    return {
        "image_size": image_size,
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std)},
    }


def _text_fields(
    tmp: Path, *, spec, model: TransferModel, meta: dict, image_size: int, max_length: int
) -> dict:
    meta["tokenizer"].copy_to(tmp / TOKENIZER_DIR)
    return {"max_length": max_length, "tokenizer": TOKENIZER_DIR}


def _tabular_fields(
    tmp: Path, *, spec, model: TransferModel, meta: dict, image_size: int, max_length: int
) -> dict:
    pre = meta["preprocessing"]
    # The hidden layers: a linear model (auto's first rung) has none.
    return {"num_inputs": pre["width"], "hidden": tabular.hidden_of(model), "preprocessing": pre}


ARTIFACT_FIELDS = {
    Modality.IMAGE: _image_fields,
    Modality.TEXT: _text_fields,
    Modality.TABULAR: _tabular_fields,
}
