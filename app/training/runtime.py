"""Run a frozen module (a network prefix for the feature cache, an eval model for predict)
on the fastest runtime for its device, chosen by measurement.

Candidates on the CPU:

| name | what runs |
| --- | --- |
| `onnxruntime` | the module exported to ONNX once per key, run by ONNX Runtime (CPU provider) |
| `eager_channels_last` | eager PyTorch, weights and input in channels_last |
| `eager` | eager PyTorch, NCHW |
| `torchscript` | a frozen TorchScript graph (predict only: `torch.jit` is deprecated) |

On CUDA the module runs eager in channels_last (the caller's bf16 autocast applies); ONNX
Runtime has no CUDA provider in the CPU wheel.

`prepare()` builds every candidate that applies, checks each against eager PyTorch on a
batch (max |diff| <= 1e-4 relative to the output's scale) and keeps only those that agree,
then times each on a short trial and runs the fastest. A candidate that fails to build or
to agree is logged and recorded in `Runner.info`, and the module stays eager. The chosen
name per (device, module signature, input shape, threads) is remembered, in memory and in
`choices.json` under the cache dir, so the trial runs once; the exported ONNX files are
cached there too, named by a digest of the module's weights and the input shape.

Intra-op threads follow torch.get_num_threads() (FINETUNE_TORCH_THREADS sets it), except
where the caller asks for a single-threaded session run side by side (`parallel`):
predict, whose batcher runs one pass per core. Intra-op threads meet at a barrier after
every operator, so on a small machine any other thread that takes a core (the API's
event loop, its clients, another job) stalls the whole pass; passes side by side on one
core each do not wait for each other. Such a runner also carries `alone`: a session of
the same checked export on `parallel` threads, for a pass that has the cores to itself.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from app.training import atomic

log = logging.getLogger(__name__)

ONNX = "onnxruntime"
EAGER = "eager"
EAGER_CL = "eager_channels_last"
TORCHSCRIPT = "torchscript"
CPU_CANDIDATES = (ONNX, EAGER_CL, EAGER)
TOLERANCE = 1e-4

# Tracing (torch.jit.trace, the ONNX exporter) is not thread-safe: two traces at once in
# one process corrupt each other ("Graphs differed across invocations"). Every export,
# check and trial in the process takes this lock, and so does export.py.
TRACE_LOCK = threading.RLock()
_lock = TRACE_LOCK
_choices: dict[str, str] = {}


def default_cache_dir() -> Path:
    """FINETUNE_RUNTIME_DIR, else <FINETUNE_DATA_DIR or ./var>/cache/runtime."""
    if explicit := os.environ.get("FINETUNE_RUNTIME_DIR"):
        return Path(explicit)
    return Path(os.environ.get("FINETUNE_DATA_DIR") or "./var") / "cache" / "runtime"


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Runner:
    """A callable tensor -> tensor on the chosen runtime; `info` says what and why."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    info: dict = field(default_factory=dict)
    # For a single-threaded ONNX Runtime session run side by side (`parallel`): a second
    # session of the same checked file on all `parallel` threads, for a pass that runs
    # alone (a lone request: one thread would leave the other cores idle).
    alone: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def weights_digest(module: nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def signature(module: nn.Module) -> str:
    """The module's architecture (its module tree and parameter shapes), not its weights:
    what the speed of a runtime depends on."""
    h = hashlib.sha256(repr(module).encode())
    for name, t in module.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- building candidates


class _Ort:
    """An ONNX Runtime session as a tensor -> tensor callable (thread-safe; run() releases
    the GIL)."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle pool threads sleep instead of spinning: spinning threads starve whatever
        # else runs on the cores (the API's event loop, torch's own pool, other jobs);
        # measured on 2 busy cores, spinning was also slower for ONNX Runtime itself.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path, self.threads = path, threads
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: arr})[0])


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, dynamic: Sequence[int] = (0,)
) -> Path:
    """`module` (eval, CPU) exported to ONNX at `path` with a dynamic batch axis; written
    to a temporary file and renamed, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning, deprecation notices
        # The TorchScript-based exporter: needs only the `onnx` package, no onnxscript.
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamic_axes={"x": {d: f"d{d}" for d in dynamic}, "y": {0: "d0"}},
        )
    return atomic.write_bytes(path, buf.getvalue())


def onnx_path(module: nn.Module, example: torch.Tensor, cache_dir: Path, salt: str = "") -> Path:
    """<cache_dir>/<digest of the weights and `salt`>-<input shape>-<dtype>.onnx"""
    digest = hashlib.sha256(f"{weights_digest(module)}/{salt}".encode()).hexdigest()[:32]
    shape = "x".join(map(str, example.shape[1:]))
    return cache_dir / f"{digest}-{shape}-{str(example.dtype).replace('torch.', '')}.onnx"


def _onnx_candidate(module, example, cache_dir: Path, threads: int, salt: str, dynamic):
    path = onnx_path(module, example, cache_dir, f"{salt}; dynamic {tuple(dynamic)}")
    if not path.exists():
        t0 = time.perf_counter()
        export_onnx(module, example, path, dynamic)
        log.info("exported %s in %.1fs", path.name, time.perf_counter() - t0)
    return _Ort(path, threads)


def _channels_last_candidate(module: nn.Module):
    cl = copy.deepcopy(module).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        return cl(x.contiguous(memory_format=torch.channels_last))

    return run


def _torchscript_candidate(module: nn.Module, example: torch.Tensor):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # check_trace=False: its re-trace comparison is what logged "Graphs differed
        # across invocations" under concurrent loads; agreement is checked below instead.
        traced = torch.jit.trace(module, example, check_trace=False)
        return torch.jit.freeze(traced.eval())


def _build(
    name: str,
    module: nn.Module,
    example: torch.Tensor,
    cache_dir: Path,
    threads: int,
    salt: str = "",
    dynamic: Sequence[int] = (0,),
):
    if name == EAGER:
        return module
    if name == EAGER_CL:
        return _channels_last_candidate(module)
    if name == TORCHSCRIPT:
        return _torchscript_candidate(module, example)
    if name == ONNX:
        if not onnxruntime_available():
            raise RuntimeError("onnxruntime is not installed")
        return _onnx_candidate(module, example, cache_dir, threads, salt, dynamic)
    raise ValueError(f"unknown runtime {name!r}")


def max_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Max |got - expected| relative to the output's scale (max(1, max |expected|))."""
    if got.shape != expected.shape:
        return float("inf")
    scale = max(1.0, float(expected.abs().max()))
    return float((got.float() - expected.float()).abs().max()) / scale


def _timings(fns: dict[str, Callable], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Best seconds per call for each candidate: each runs a warm-up call and then two
    timed calls in a block (interleaving calls lets one runtime's idle threads disturb the
    next); the rounds alternate the order, and best-of ignores the calls another process
    stole."""
    best = {n: float("inf") for n in fns}
    names = list(fns)
    with torch.inference_mode():
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                if r == 0:
                    fns[name](x)
                for _ in range(2):
                    t0 = time.perf_counter()
                    fns[name](x)
                    best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _load_choices(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_choice(path: Path, key: str, name: str) -> None:
    try:
        choices = _load_choices(path) | {key: name}
        atomic.write_text(path, json.dumps(choices, indent=1, sort_keys=True))
    except OSError as exc:  # a read-only cache only costs a trial next time
        log.warning("could not record the runtime choice in %s: %s", path, exc)


def _checked(
    names, module, example, check, expected, cache_dir, threads, tolerance, info, salt, dynamic
) -> dict[str, Callable]:
    """The candidates among `names` that build and agree with eager on `check`."""
    built: dict[str, Callable] = {}
    for name in names:
        try:
            fn = _build(name, module, example, cache_dir, threads, salt, dynamic)
            diff = max_diff(fn(check), expected)
        except Exception as exc:  # noqa: BLE001 - any failure: not this runtime
            log.warning("runtime %s unavailable for this model: %s", name, exc)
            info.setdefault("rejected", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        if not diff <= tolerance:
            log.warning(
                "runtime %s rejected: output differs from eager by %.2e (> %.0e)",
                name,
                diff,
                tolerance,
            )
            info.setdefault("rejected", {})[name] = f"differs from eager by {diff:.2e}"
            continue
        built[name] = fn
    return built


def prepare(
    module: nn.Module,
    *,
    example: torch.Tensor,
    check: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    candidates: Sequence[str] = CPU_CANDIDATES,
    cache_dir: Path | None = None,
    trial: torch.Tensor | None = None,
    rounds: int = 3,
    tolerance: float = TOLERANCE,
    salt: str = "",
    dynamic: Sequence[int] = (0,),
    choices_file: Path | None = None,
    threads: int | None = None,
    parallel: int = 1,
) -> Runner:
    """The fastest runtime for `module` (eval mode, on `device`) that agrees with eager.

    `example` is used to export (and its shape names the ONNX file); `check` (default
    `example`) is the batch every candidate must reproduce, best of a batch size other than
    the export's; `trial` (default `check`) the batch timed to choose. `dynamic`: the
    input axes an export takes at any size (the batch; a text's length too), which
    `check` should vary. ONNX files go
    to `cache_dir` (default: default_cache_dir()), named by the weights' digest and
    `salt` (what else the module computes with that is not a weight); the choices to
    `choices_file` (default: choices.json in default_cache_dir()).

    `threads`: ONNX Runtime's intra-op threads (default torch.get_num_threads()).
    `parallel`: how many calls the caller runs side by side on a single-threaded ONNX
    Runtime session (predict's batcher workers); its trial time is divided by it, since
    that is the throughput it gives against the multi-threaded torch candidates."""
    device = torch.device(device)
    module.eval()
    if device.type != "cpu":
        # CUDA: eager in channels_last, under the caller's autocast.
        return Runner(EAGER_CL, _channels_last_candidate(module), {"runtime": EAGER_CL})
    if example.dim() != 4:  # channels_last is for images
        candidates = [c for c in candidates if c != EAGER_CL]
    check = example if check is None else check
    trial = check if trial is None else trial
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    threads = threads or torch.get_num_threads()
    choice_key = (
        f"{device.type}/{signature(module)}/{tuple(example.shape[1:])}/{example.dtype}/t{threads}"
    )
    if parallel > 1:
        choice_key += f"/p{parallel}"
    info: dict = {"runtime": EAGER, "threads": threads}
    with _lock, torch.no_grad():
        expected = module(check)
        choices_file = choices_file or default_cache_dir() / "choices.json"
        known = _choices.get(choice_key) or _load_choices(choices_file).get(choice_key)

        def agreeing(names) -> dict[str, Callable]:
            return _checked(
                names,
                module,
                example,
                check,
                expected,
                cache_dir,
                threads,
                tolerance,
                info,
                salt,
                dynamic,
            )

        built = agreeing([known] if known in candidates else candidates)
        if not built and known in candidates:  # the remembered one failed: try them all
            built = agreeing([n for n in candidates if n != known])
        if not built:
            return Runner(EAGER, module, info)
        if len(built) == 1:
            name = next(iter(built))
            info["chosen_by"] = "remembered" if name == known else "only candidate"
        else:
            timings = _timings(built, trial, rounds)
            if ONNX in timings and threads == 1 and parallel > 1:
                timings[ONNX] /= parallel
            name = min(timings, key=timings.get)
            info["chosen_by"] = "trial"
            info["trial_images_per_s"] = {
                n: round(len(trial) / t, 1) for n, t in sorted(timings.items())
            }
            _save_choice(choices_file, choice_key, name)
            log.info("runtime for %s: %s (%s)", choice_key, name, info["trial_images_per_s"])
        _choices[choice_key] = name
    info["runtime"] = name
    fn = built[name]
    alone = None
    if name == ONNX and threads == 1 and parallel > 1:
        alone = _alone_session(fn, parallel, module, check, expected, tolerance, info)
    if name in (ONNX, TORCHSCRIPT):
        # Exported for inputs of the example's shape but for the `dynamic` axes: another
        # shape (a text split padded to another length) runs eager rather than fail.
        fixed = [(d, n) for d, n in enumerate(example.shape) if d not in dynamic]

        def shaped(fast: Callable) -> Callable:
            def run(x: torch.Tensor) -> torch.Tensor:
                ok = x.dim() == example.dim() and all(x.shape[d] == n for d, n in fixed)
                return fast(x) if ok else module(x)

            return run

        fn = shaped(fn)
        alone = shaped(alone) if alone is not None else None
    return Runner(name, fn, info, alone)


def _alone_session(session, threads, module, check, expected, tolerance, info):
    """A session of `session`'s checked ONNX file on `threads` intra-op threads, checked
    against eager as the first was, and kept only where it runs one input faster than
    `session` does (a small model at 64 px runs a lone image faster on one thread: the
    threads' hand-offs cost more than they share); None (said in `info`) otherwise."""
    try:
        with _lock, torch.no_grad():
            alone = _Ort(session.path, threads)
            diff = max_diff(alone(check), expected)
            if diff <= tolerance:
                one = {"alone": alone, "one": session}
                times = _timings(one, check[:1], rounds=3)
    except Exception as exc:  # noqa: BLE001 - the side-by-side session still serves
        info["alone_rejected"] = f"{type(exc).__name__}: {exc}"[:300]
        return None
    if not diff <= tolerance:
        info["alone_rejected"] = f"differs from eager by {diff:.2e}"
        return None
    ms = {n: round(t * 1e3, 2) for n, t in times.items()}
    if times["alone"] >= times["one"]:
        info["alone_rejected"] = (
            f"not faster for one input: {ms['alone']} ms on {threads} threads, "
            f"{ms['one']} ms on one"
        )
        return None
    info["alone_threads"] = threads
    info["alone_ms"] = ms
    return alone


def forget_choices() -> None:
    """Drop the in-memory choices (tests; the file is the caller's to remove)."""
    _choices.clear()


# Training passes (samples x epochs) below this get no trial: the trial itself (two
# formats, a few forward+backward steps of 16: about 160 samples' worth, 0.9 s for
# EfficientNet-Lite0 at 64 px) would cost more than it saves. They take what an earlier
# trial of the same (architecture, shape, threads) chose, else the prior below:
# channels_last from CL_PRIOR_MIN_SIDE px. Which format wins depends on the CPU, not
# only the size: on one 2-core machine Lite0 at 224 px trained at 17.1 img/s
# channels_last against 9.9 NCHW and at 64 px channels_last was the slower; on another
# (with AMX), at 64 px an epoch of 420 digits took 2.2 s channels_last against 3.1 s
# NCHW for `full` and 1.1 against 1.7 s for the top 4 blocks, which is why an `auto`
# candidate's 420 samples x 8 epochs now pay for a trial (remembered for the others).
TRAIN_TRIAL_MIN_WORK = 1024
CL_PRIOR_MIN_SIDE = 128


def train_channels_last(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    work: int = TRAIN_TRIAL_MIN_WORK,
    choices_file: Path | None = None,
    rounds: int = 2,
) -> bool:
    """Whether training `model` on inputs of `input_shape` (N, C, H, W) is faster in
    channels_last. On CUDA always (cuDNN); on the CPU by a timed forward+backward of a
    copy of the model in each format, remembered per (architecture, shape, threads). At
    224 px channels_last is ~1.9x faster for depthwise EfficientNet-Lite0 on the CPU; at
    64 px it was slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu" or len(input_shape) != 4:
        return False
    threads = torch.get_num_threads()
    key = f"train/{device.type}/{signature(model)}/{tuple(input_shape)}/t{threads}"
    prior = EAGER_CL if min(input_shape[2:]) >= CL_PRIOR_MIN_SIDE else EAGER
    chosen = remembered(
        key,
        lambda: _train_timings(model, input_shape, rounds),
        prior=prior,
        work=work,
        choices_file=choices_file,
    )
    return chosen == EAGER_CL


def remembered(
    key: str,
    measure: Callable[[], dict[str, float]],
    *,
    prior: str,
    work: int,
    choices_file: Path | None = None,
) -> str:
    """The name a trial chose for `key` (the fastest of `measure()`'s seconds per step),
    remembered in memory and in `choices_file`; with no choice yet and under
    TRAIN_TRIAL_MIN_WORK samples x epochs of `work`, `prior` (and nothing remembered)."""
    choices_file = choices_file or default_cache_dir() / "choices.json"
    with _lock:
        known = _choices.get(key) or _load_choices(choices_file).get(key)
        if known is None and work < TRAIN_TRIAL_MIN_WORK:  # too little work for a trial
            return prior
        if known is None:
            timings = measure()
            known = min(timings, key=timings.get)
            _save_choice(choices_file, key, known)
            log.info(
                "training %s: %s (%s s/step)",
                key,
                known,
                {n: round(t, 4) for n, t in timings.items()},
            )
        _choices[key] = known
    return known


FP32, BF16 = "fp32", "bf16"


def train_autocast(
    key: str,
    step: Callable[[bool], None],
    *,
    device: torch.device | str = "cpu",
    work: int = TRAIN_TRIAL_MIN_WORK,
    choices_file: Path | None = None,
    rounds: int = 2,
) -> bool:
    """Whether training steps run under bf16 autocast on the CPU: by a timed trial of
    `step(autocast)` (one forward+backward, on a copy: the caller's), remembered per
    `key` (the architecture, what trains, the input shape) and threads. CPUs with bf16
    matrix units (AMX, AVX-512 BF16) run a transformer's training steps 1.4-1.6x faster
    under it; others emulate bf16 and run slower, and depthwise convolutions gain
    nothing. The weights, their gradients and the optimizer stay in fp32, and evaluation
    runs in fp32 (as predict does). CUDA: the caller's autocast (always bf16)."""
    device = torch.device(device)
    if device.type != "cpu":
        return False
    threads = torch.get_num_threads()

    def measure() -> dict[str, float]:
        best = {FP32: float("inf"), BF16: float("inf")}
        with torch.random.fork_rng():  # dropout in the trial leaves training's RNG alone
            for r in range(rounds):
                for name in (FP32, BF16) if r % 2 == 0 else (BF16, FP32):
                    if r == 0:
                        step(name == BF16)
                    t0 = time.perf_counter()
                    step(name == BF16)
                    best[name] = min(best[name], time.perf_counter() - t0)
        return best

    key = f"train-amp/{device.type}/{key}/t{threads}"
    return remembered(key, measure, prior=FP32, work=work, choices_file=choices_file) == BF16


def _train_timings(model: nn.Module, shape: Sequence[int], rounds: int) -> dict[str, float]:
    """Best seconds per forward+backward step in each memory format, on copies (the
    model's weights, BatchNorm statistics and gradients are untouched)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    copies = {
        EAGER: copy.deepcopy(model).train(),
        EAGER_CL: copy.deepcopy(model).train().to(memory_format=torch.channels_last),
    }
    inputs = {EAGER: x, EAGER_CL: x.contiguous(memory_format=torch.channels_last)}
    for m in copies.values():
        for p in m.parameters():
            p.requires_grad_(True)

    def step(name: str) -> None:
        copies[name](inputs[name]).float().sum().backward()

    best = {n: float("inf") for n in copies}
    names = list(copies)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if r == 0:
                step(name)
            t0 = time.perf_counter()
            step(name)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best
