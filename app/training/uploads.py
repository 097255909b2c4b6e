"""Check uploaded pretrained weights: safetensors only, keys and shapes of a known
architecture. Nothing here ever unpickles: a pickle (torch.save's .pt/.pth, a plain
pickle) is recognised by its first bytes and refused before any parser sees it, and
safetensors files are read with the safetensors library, which cannot run code.

The expected names are those of a TransferModel of the architecture (`stem.*`,
`blocks.<k>.*`, `head.*`): what GET /v1/models/{id}/export?format=safetensors gives;
for `minilm-l6`, a Hugging Face BertModel checkpoint's names are read too. The head may
be absent or of any class count (a job gives the model a head for its own classes); a
tabular MLP's first layer may take any number of encoded features.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from app.training import text
from app.training.build import build_model, get_base_model
from app.training.errors import InvalidInput

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _refuse(message: str, code: str = "invalid_weights") -> InvalidInput:
    return InvalidInput(message, code=code)


def _check_format(path: Path) -> None:
    """Refuse anything that is not a safetensors file, by its first bytes alone."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK" or head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q"):
        raise _refuse(
            "pickled weights (torch.save .pt/.pth, pickle) are refused and never loaded: "
            "save a state dict with safetensors.torch.save_file and upload that",
            code="pickle_refused",
        )
    if len(head) < 10:
        raise _refuse("not a safetensors file: too short")
    (n,) = struct.unpack("<Q", head[:8])
    if not (2 <= n <= MAX_HEADER) or head[8:9] != b"{":
        raise _refuse("not a safetensors file (expected an 8-byte header length, then JSON)")


def inspect_upload(path: Path, architecture: str) -> dict:
    """{"task", "params", "num_classes" (None without a head)} of valid weights for
    `architecture`; InvalidInput naming the problem otherwise."""
    spec = get_base_model(architecture)
    _check_format(path)
    try:
        state = load_upload(path, architecture)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise _refuse(f"not a readable safetensors file: {e}") from None
    first = state.get("blocks.0.0.weight")
    num_inputs = (
        int(first.shape[1])
        if spec.sized_to_inputs and first is not None and first.dim() == 2
        else None
    )
    head = state.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None and head.dim() == 2 else None
    with torch.device("meta"):
        expected = build_model(
            base_model=architecture,
            num_classes=num_classes or 2,
            pretrained=False,
            num_inputs=num_inputs,
        ).state_dict()
    missing = [k for k in expected if k not in state and not k.startswith("head.")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if items:
                parts.append(f"{label}: {', '.join(items[:5])}{' …' if len(items) > 5 else ''}")
        raise _refuse(
            f"the weights do not fit {architecture}: " + "; ".join(parts),
            code="weights_mismatch",
        )
    if not all(
        v.is_floating_point() or k.endswith("num_batches_tracked") for k, v in state.items()
    ):
        raise _refuse("weights must be floating-point tensors")
    return {
        "task": spec.task,
        "params": sum(v.numel() for k, v in state.items() if v.is_floating_point()),
        "num_classes": num_classes,
    }


def load_upload(path: Path, architecture: str) -> dict[str, torch.Tensor]:
    """The uploaded state dict in TransferModel names (safetensors only, never a pickle)."""
    state = load_file(str(path))
    return text.from_hf_names(state) if architecture == "minilm-l6" else state
