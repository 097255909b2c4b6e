"""Load a trained model artifact and predict, with the same eval preset as training.

`load_predictor(artifact_dir)` picks the predictor for the artifact's task: images
(`Predictor`), text (`TextPredictor`, with the tokenizer copied into the artifact) or
tabular (`TabularPredictor`, with the preprocessing from config.json). Each has
`check(inputs)` (validate a request's inputs, raising InvalidInput naming the problem;
run in the request, before batching) and `predict(inputs, top_k)`. What predict returns
per input comes from the task's kind (tasks.OUTPUTS): {label, score, top_k} for a
classification, {labels, top_k} for multi-label, {value} for regression.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from PIL import Image

from app.training import features, runtime, tabular, text
from app.training.artifact import load_artifact, runtime_dir, tokenizer_dir
from app.training.build import build_model
from app.training.errors import InvalidInput
from app.training.presets import EvalPreset, pil_to_uint8
from app.training.tasks import Modality, get_task

log = logging.getLogger(__name__)

# TorchScript (deprecated) stays a candidate only for predict, where it can still win at
# batch 1; the trial decides.
PREDICT_CANDIDATES = (runtime.ONNX, runtime.EAGER_CL, runtime.TORCHSCRIPT, runtime.EAGER)


def decode_image(data: bytes, size: int | None = None) -> Image.Image:
    """Fully decoded RGB image, or InvalidInput for non-images, truncated files and
    decompression bombs (more pixels than PIL's Image.MAX_IMAGE_PIXELS).

    With `size` (the model's image size), a JPEG is decoded by libjpeg at the smallest
    of 1/1, 1/2, 1/4, 1/8 scale that still covers size x size (PIL `draft`), as training
    decodes it (data.py): a 12 Mpx photo for a 224 px model decodes ~8x faster, and the
    whole stream is still read, so truncation is still caught."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; we refuse from 1x.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if size and img.format == "JPEG":
                    img.draft("RGB", (size, size))
                img.load()  # decode now: truncation shows up here, not later
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInput(f"image too large (decompression bomb protection): {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidInput(f"not a readable image: {e}") from e


class _TaskOutput:
    """The task's output (tasks.OUTPUTS): the layer after the logits (softmax, sigmoid,
    de-standardisation) and the response objects built from it."""

    device: torch.device
    # Forward passes that may run at once from different threads (predict's batcher
    # workers): more than one only on a single-threaded ONNX Runtime session (accelerate).
    parallel_runs = 1
    # With those: the same model on a session of every core's threads, for a pass that
    # runs alone (predict(alone=True)); None runs every pass on `forward`.
    forward_alone = None

    def _forward(self, alone: bool):
        return self.forward_alone if alone and self.forward_alone is not None else self.forward

    def _set_task(self, config: dict) -> None:
        self.config = config
        self.task = str(get_task(config.get("task")).name)
        self.output = get_task(self.task).output
        self.output_layer = self.output.layer(config).to(self.device)


class Predictor(_TaskOutput):
    def __init__(
        self,
        *,
        model: torch.nn.Module,
        classes: list[str],
        image_size: int,
        preset: EvalPreset,
        device: torch.device,
        batch_size: int = 64,
        config: dict | None = None,
    ):
        self.model, self.classes, self.image_size = model, classes, image_size
        self.preset, self.device, self.batch_size = preset, device, batch_size
        self._set_task(config or {"classes": classes})
        # What predict runs on a uint8 batch: the preset then the eager model, or after
        # accelerate() the same on the fastest runtime (runtime.py).
        self.forward = _Normalised(model, preset)
        self.runtime, self.runtime_info = runtime.EAGER, {"runtime": runtime.EAGER}

    @classmethod
    def load(cls, artifact_dir: Path, device: str = "cpu") -> Predictor:
        config, state = load_artifact(artifact_dir)
        return cls.from_artifact(config, state, device)

    @classmethod
    def from_artifact(cls, config: dict, state: dict, device: str = "cpu") -> Predictor:
        """The predictor of an artifact already read (artifact.load_artifact)."""
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
            config=config,
        )

    def accelerate(self, cache_dir: Path | None = None) -> Predictor:
        """Serve the eval model (preset included) on the fastest runtime for its device
        that agrees with eager to 1e-4 (runtime.prepare: ONNX Runtime, a frozen
        TorchScript graph, eager channels_last or eager, chosen by a short trial that is
        remembered per architecture and size). The ONNX file is kept in `cache_dir`
        (the artifact's `runtime/` folder). Any failure leaves predict eager (logged)."""
        size = self.image_size
        gen = torch.Generator().manual_seed(0)

        def batch(n: int) -> torch.Tensor:
            x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
            return x.to(self.device)

        cpu = self.device.type == "cpu"
        try:
            runner = runtime.prepare(
                self.forward,
                example=batch(2),
                check=batch(3),  # a batch size other than the export's
                trial=batch(8),
                device=self.device,
                candidates=PREDICT_CANDIDATES if cpu else (runtime.EAGER,),
                cache_dir=cache_dir,
                salt=features.preset_key(self.preset),
                **_side_by_side(self.device),
            )
        except Exception as exc:  # noqa: BLE001 - never fail a load over a speed-up
            log.warning("predict runs the eager model: runtime choice failed (%s)", exc)
            return self
        _use(self, runner)
        return self

    def predict_tensor(self, batch: torch.Tensor, alone: bool = False) -> torch.Tensor:
        """uint8 (N,3,S,S) at image_size -> the task's outputs (N, head) on the CPU:
        class probabilities, per-label scores or values. `alone`: no other pass runs
        beside this one, so it may take every core (forward_alone)."""
        out = []
        forward = self._forward(alone)
        with torch.inference_mode(), _amp(self.device):
            for chunk in batch.split(self.batch_size):
                logits = forward(chunk.to(self.device)).float()
                out.append(self.output_layer(logits).cpu())
        head = self.config.get("num_classes", len(self.classes))
        return torch.cat(out) if out else torch.empty(0, head)

    def predict_images(self, images: list[Image.Image], top_k: int = 1) -> list[dict]:
        """[{label, score, top_k: [{label, score}]}] in input order."""
        return self.predict(self.check(images), top_k)

    def check(self, inputs: list) -> list[torch.Tensor]:
        """Decoded images -> uint8 (3, S, S) tensors at the model's size, as in training
        (done per request, so the batch's forward pass does nothing else)."""
        if not all(isinstance(x, Image.Image) for x in inputs):
            raise InvalidInput("an image model takes images (multipart 'files')")
        return [pil_to_uint8(img, self.image_size) for img in inputs]

    def predict(
        self, inputs: list[torch.Tensor], top_k: int = 1, alone: bool = False
    ) -> list[dict]:
        """Inputs from check() -> [{label, score, top_k: [{label, score}]}] in order."""
        if not inputs:
            return []
        out = self.predict_tensor(torch.stack(inputs), alone)
        return self.output.present(out, self.config, top_k)


def _side_by_side(device: torch.device) -> dict:
    """runtime.prepare's threading for predict: on the CPU, an ONNX Runtime session of
    one intra-op thread, run by as many batcher workers as torch has threads."""
    if device.type != "cpu":
        return {}
    return {"threads": 1, "parallel": torch.get_num_threads()}


def _use(predictor, runner: runtime.Runner) -> None:
    """Switch the predictor's forward pass onto `runner` (one assignment: a pass in
    flight finishes on either), with how many passes may run at once."""
    side_by_side = runner.name == runtime.ONNX and runner.info.get("threads") == 1
    predictor.parallel_runs = torch.get_num_threads() if side_by_side else 1
    predictor.forward_alone = runner.alone if side_by_side else None
    predictor.forward, predictor.runtime, predictor.runtime_info = runner, runner.name, runner.info


def _amp(device: torch.device):
    """bf16 autocast on CUDA, as training evaluates; nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Normalised(torch.nn.Module):
    """uint8 images -> the eval preset -> the model's logits, as one module to trace."""

    def __init__(self, model: torch.nn.Module, preset: EvalPreset):
        super().__init__()
        self.model, self.preset = model, preset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preset(x))


class _TensorPredictor(_TaskOutput):
    """Shared by text and tabular: encode the inputs to one tensor, forward in chunks."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        classes: list[str],
        device: torch.device,
        config: dict | None = None,
    ):
        self.model, self.classes, self.device, self.batch_size = model, classes, device, 64
        self._set_task(config or {"classes": classes})
        self.forward = model
        self.runtime, self.runtime_info = runtime.EAGER, {"runtime": runtime.EAGER}

    def samples(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """(example, check, trial, dynamic axes) for runtime.prepare."""
        raise NotImplementedError

    def accelerate(self, cache_dir: Path | None = None):
        """As Predictor.accelerate: the encoded-input model on the fastest checked runtime
        (ONNX Runtime or eager on the CPU), the choice remembered per architecture."""
        if self.device.type != "cpu":
            return self
        try:
            example, check, trial, dynamic = self.samples()
            runner = runtime.prepare(
                self.model,
                example=example,
                check=check,
                trial=trial,
                candidates=(runtime.ONNX, runtime.EAGER),
                cache_dir=cache_dir,
                dynamic=dynamic,
                **_side_by_side(self.device),
            )
        except Exception as exc:  # noqa: BLE001 - never fail a load over a speed-up
            log.warning("predict runs the eager model: runtime choice failed (%s)", exc)
            return self
        _use(self, runner)
        return self

    def encode(self, inputs: list) -> torch.Tensor:
        raise NotImplementedError

    def check(self, inputs: list) -> list:
        raise NotImplementedError

    def predict(self, inputs: list, top_k: int = 1, alone: bool = False) -> list[dict]:
        if not inputs:
            return []
        x = self.encode(inputs)
        out = []
        forward = self._forward(alone)
        with torch.inference_mode():
            for chunk in x.split(self.batch_size):
                logits = forward(chunk.to(self.device)).float()
                out.append(self.output_layer(logits).cpu())
        return self.output.present(torch.cat(out), self.config, top_k)


class TextPredictor(_TensorPredictor):
    def __init__(self, *, tokenizer: text.TextTokenizer, **kw):
        super().__init__(**kw)
        self.tokenizer = tokenizer
        self.batch_size = 32

    def check(self, inputs: list) -> list:
        return text.check_texts(inputs)

    def encode(self, inputs: list) -> torch.Tensor:
        return self.tokenizer(inputs)

    def samples(self):
        # The export's length differs from the check's: the length axis must be dynamic.
        words = "the service runs each model on the fastest runtime it measured".split()
        short = [" ".join(words[:3]), " ".join(words[:5])]
        longer = [" ".join(words * k) for k in (1, 2, 3)]
        trial = [" ".join(words * 3)] * 4
        return self.tokenizer(short), self.tokenizer(longer), self.tokenizer(trial), (0, 2)


# A standard-scaled feature further than this from the training mean is refused: the
# model's output would overflow toward inf, and its scores to NaN.
MAX_Z = 1e6


class TabularPredictor(_TensorPredictor):
    def __init__(self, *, preprocessing: dict, **kw):
        super().__init__(**kw)
        self.preprocessing = preprocessing
        self.columns = [f["column"] for f in preprocessing["features"]]

    def check(self, inputs: list) -> list:
        """Rows are encoded here (in the request): errors name the row and column. Values
        must encode to finite numbers within MAX_Z standard deviations of the training
        mean, so the model's output is always finite (no NaN score)."""
        self._precheck(inputs)
        encoded = tabular.encode_rows(self.preprocessing, inputs, strict=True)
        bad = ~(torch.isfinite(encoded) & (encoded.abs() <= MAX_Z))
        if bad.any():
            i, j = (int(v) for v in bad.nonzero()[0])
            raise InvalidInput(
                f"inputs[{i}].{self._column_of(j)}: too far from the training data "
                f"(more than {MAX_Z:.0e} standard deviations from its mean)"
            )
        return list(encoded)

    def _precheck(self, inputs: list) -> None:
        """What encode_rows would choke on: containers as values (whose repr could
        recurse), integers too large for a float."""
        for i, row in enumerate(inputs):
            if not isinstance(row, dict):
                continue  # encode_rows names it
            for col in self.columns:
                v = row.get(col)
                if isinstance(v, list | dict):
                    raise InvalidInput(
                        f"inputs[{i}].{col}: expected a number, a string or null, "
                        f"got {type(v).__name__}"
                    )
                if isinstance(v, int) and not isinstance(v, bool):
                    try:
                        float(v)
                    except OverflowError:
                        raise InvalidInput(
                            f"inputs[{i}].{col}: integer too large ({len(str(abs(v)))} digits)"
                        ) from None

    def _column_of(self, j: int) -> str:
        """The feature column that encoded column j belongs to."""
        start = 0
        for f in self.preprocessing["features"]:
            width = len(f["categories"]) if f["type"] != "numeric" else 1 + f["indicator"]
            if j < start + width:
                return f["column"]
            start += width
        return "?"

    def encode(self, inputs: list) -> torch.Tensor:
        return torch.stack(inputs)

    def samples(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(16, self.preprocessing["width"], generator=gen)
        return x[:2], x[:3], x, (0,)


def _load_image(artifact_dir: Path, config: dict, state: dict, device: str) -> Predictor:
    return Predictor.from_artifact(config, state, device)


def _tensor_model(config: dict, state: dict, device: str, **shape) -> dict:
    """The model of an artifact, in eval mode on `device`; `shape` what its architecture
    needs beyond config["architecture"] (a tabular model's hidden layers)."""
    model = build_model(
        base_model=config["architecture"],
        num_classes=config["num_classes"],
        pretrained=False,
        state_dict=state,
        num_inputs=config.get("num_inputs"),
        **shape,
    )
    dev = torch.device(device)
    model.to(dev).eval()
    return {"model": model, "classes": config["classes"], "device": dev, "config": config}


def _load_text(artifact_dir: Path, config: dict, state: dict, device: str) -> TextPredictor:
    tokenizer = text.TextTokenizer(tokenizer_dir(artifact_dir, config), config["max_length"])
    return TextPredictor(tokenizer=tokenizer, **_tensor_model(config, state, device))


def _load_tabular(artifact_dir: Path, config: dict, state: dict, device: str) -> TabularPredictor:
    # Its hidden layers as recorded (none: a linear model); older models: the default MLP.
    model = _tensor_model(config, state, device, hidden=tabular.hidden_in(config))
    return TabularPredictor(preprocessing=config["preprocessing"], **model)


LOADERS = {Modality.IMAGE: _load_image, Modality.TEXT: _load_text, Modality.TABULAR: _load_tabular}


def load_predictor(
    artifact_dir: Path, device: str = "cpu", accelerate: bool = True
) -> Predictor | TextPredictor | TabularPredictor:
    """The predictor for the artifact's task (its modality's loader), on the fastest
    runtime (`accelerate`), or eager (the caller may call
    `accelerate(runtime_dir(artifact_dir))` later)."""
    config, state = load_artifact(artifact_dir)
    try:
        task = get_task(config.get("task", "image_classification"))
    except Exception:  # noqa: BLE001 - an artifact from elsewhere: name its task
        raise InvalidInput(f"unknown model task {config.get('task')!r}") from None
    predictor = LOADERS[task.modality](artifact_dir, config, state, device)
    return predictor.accelerate(runtime_dir(artifact_dir)) if accelerate else predictor
