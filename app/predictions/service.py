"""Predict: loaded models stay cached (LRU), concurrent requests are micro-batched.

A model's row (owner, task, classes) is remembered too, so a request for a cached model
reads nothing from the database: a trained model never changes and is never deleted.

A request's inputs are decoded and checked in the request (images decoded and resized,
text checked, tabular rows encoded: `predictor.check`). Each loaded model then has a
batcher whose worker threads run every forward pass for it: a free worker takes what is
queued (up to `max_batch` inputs) at once, so the runtime never idles while requests
wait, a lone request never waits, and a stream of them fills batches. On the CPU there
is one worker per core, each pass single-threaded (`Batcher`).

A model is loaded once however many requests wait (`ModelCache`, single-flight), answers
eager at once, and moves onto the fastest runtime for its device in the background
(runtime.py via `predictor.accelerate`). An evicted model's memory goes back to the
system, so memory is bounded by the cache size, not by the number of reloads.
"""

import asyncio
import contextlib
import ctypes
import gc
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from app.core.db import get_sessionmaker
from app.registry import service as registry
from app.training.inference import (
    Predictor,
    TabularPredictor,
    TextPredictor,
    load_predictor,
    runtime_dir,
)

AnyPredictor = Predictor | TextPredictor | TabularPredictor

BATCH_SIZE = Histogram(
    "finetune_predict_batch_inputs",
    "Inputs per predict forward pass (requests batched together)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

MODEL_LOADS = Counter(
    "finetune_model_loads", "Models loaded for predict (one per cache miss, however many wait)"
)

LOADED = Gauge(
    "finetune_predict_models",
    "Models loaded for predict, by the runtime each runs on (runtime.py)",
    ["runtime"],
)


def _runtime(predictor) -> str:
    return getattr(predictor, "runtime", "eager")


# Inputs queued for a second pass to start beside a running one.
MIN_SIDE = 4


@dataclass
class _Pending:
    """A submitted request: its inputs, answered in slices by one or more passes."""

    inputs: list[Any]
    top_k: int
    future: asyncio.Future = field(repr=False)
    taken: int = 0  # inputs handed to a pass so far
    results: list[Any] = field(default_factory=list, repr=False)
    left: int = 0  # inputs not answered yet
    failed: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.inputs)
        self.left = len(self.inputs)


def _settle_all(outcomes: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():  # the request went away (client disconnected)
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class Batcher:
    """Gathers concurrent requests for one model into batches, run by its worker threads.

    A worker that is free takes what is queued at once (up to `max_batch` inputs, shared
    with the other free workers) and runs it: a lone request never waits, and requests
    that arrive during a pass make the next one. There is no gathering window: a runtime
    that waited for company would idle while requests wait.

    `predictor.parallel_runs` workers run at once (runtime.py: each pass on one core, so
    passes side by side use the cores with no intra-op barriers for the event loop and
    the clients to stall). A request's inputs may be split over free workers, so one large
    request uses every core too; its answer is put back together in input order."""

    def __init__(self, predictor: AnyPredictor, *, max_batch: int):
        self.predictor, self.max_batch = predictor, max_batch
        self._queue: deque[_Pending] = deque()
        self._queued_inputs = 0
        self._cond = threading.Condition()
        self._closed = False
        self._workers = 0  # threads started
        self._idle = 0  # of which waiting for work
        self._running = 0  # passes running

    def _want_workers(self) -> int:
        return max(1, int(getattr(self.predictor, "parallel_runs", 1)))

    async def submit(self, inputs: list[Any], top_k: int) -> list[dict]:
        if not inputs:
            return []
        pending = _Pending(inputs, top_k, asyncio.get_running_loop().create_future())
        with self._cond:
            self._queue.append(pending)
            self._queued_inputs += len(inputs)
            while self._workers < self._want_workers():
                self._workers += 1
                threading.Thread(target=self._run, name="predict", daemon=True).start()
            self._cond.notify()
        return await pending.future

    def _ready(self) -> bool:
        """Whether a free worker should start a pass now: always when no pass runs (the
        runtime is free), and beside a running pass only with MIN_SIDE inputs or more
        queued (a pass of one or two images costs nearly as much as one of four)."""
        if not self._queue:
            return False
        return self._running == 0 or self._queued_inputs >= MIN_SIDE

    def _next_batch(self) -> tuple[list[tuple[_Pending, int, int]], bool] | None:
        """([(request, start, end)] slices of queued requests for one pass, whether it
        runs alone); None once closed and drained (the worker ends). A pass runs alone
        when no other is running and it takes everything queued: it may then use every
        core (predictor.forward_alone), where side by side each pass has one."""
        with self._cond:
            self._idle += 1
            while not self._closed and not self._ready():
                self._cond.wait()
            self._idle -= 1
            if not self._queue:
                self._workers -= 1
                return None
            # Shared with the other free workers when each gets MIN_SIDE inputs or more.
            n = self._queued_inputs
            room = n
            if self._idle and n >= 2 * MIN_SIDE:
                room = max(MIN_SIDE, -(-n // (1 + self._idle)))
            room = min(self.max_batch, room)
            batch = []
            while self._queue and room > 0:
                p = self._queue[0]
                k = min(room, len(p.inputs) - p.taken)
                batch.append((p, p.taken, p.taken + k))
                p.taken += k
                room -= k
                if p.taken == len(p.inputs):
                    self._queue.popleft()
            self._queued_inputs -= sum(end - start for _, start, end in batch)
            alone = self._running == 0 and not self._queue
            self._running += 1
            if self._queue:
                self._cond.notify()  # the rest for another free worker
            return batch, alone

    def _run(self) -> None:
        while (taken := self._next_batch()) is not None:
            batch, alone = taken
            inputs = [x for p, start, end in batch for x in p.inputs[start:end]]
            BATCH_SIZE.observe(len(inputs))
            top_k = max(p.top_k for p, _, _ in batch)
            try:
                if alone and getattr(self.predictor, "forward_alone", None) is not None:
                    results = self.predictor.predict(inputs, top_k, alone=True)
                else:
                    results = self.predictor.predict(inputs, top_k)
                error = None
            except Exception as exc:  # hand the failure to every waiting request
                results, error = None, exc
            self._answer(batch, results, error)

    def _answer(self, batch, results, error) -> None:
        outcomes = []
        offset = 0
        with self._cond:
            self._running -= 1
            for p, start, end in batch:
                if error is not None:
                    if not p.failed:
                        p.failed = True
                        outcomes.append((p.future, None, error))
                    continue
                for i, r in enumerate(results[offset : offset + end - start], start):
                    if "top_k" in r:  # a regression answers {value} only
                        r["top_k"] = r["top_k"][: p.top_k]
                    p.results[i] = r
                offset += end - start
                p.left -= end - start
                if p.left == 0 and not p.failed:
                    outcomes.append((p.future, p.results, None))
        # One hand-off to the event loop for the whole pass (each call wakes the loop).
        loops: dict[Any, list] = {}
        for outcome in outcomes:
            loops.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, items in loops.items():
            loop.call_soon_threadsafe(_settle_all, items)

    def close(self) -> None:
        """Evicted: the workers answer what is queued, then end. A request that still
        holds this batcher and submits later starts one again (it is answered, not lost)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(frozen=True)
class ModelInfo:
    """What predict needs of a model's row."""

    id: str
    owner_id: str
    task: str
    classes: tuple[str, ...]


class ModelCache:
    """Loaded predictors by model id, least recently used evicted past `capacity`; and
    the rows of recently used models (many more: they are small).

    A model is loaded once however many requests wait for it (single-flight): the first
    request starts the load in its own thread, later ones wait on the same future. An
    evicted model's memory goes back to the system (`_release`), so the API's memory is
    bounded by the cache size, not by how many loads it has done."""

    MAX_INFO = 4096

    def __init__(self, *, capacity: int, max_batch: int, device: str = "cpu"):
        self.capacity, self.max_batch = capacity, max_batch
        self.device = device
        self._items: OrderedDict[str, Batcher] = OrderedDict()
        self._loading: dict[str, Future] = {}
        self._info: dict[str, ModelInfo] = {}
        self._lock = threading.Lock()
        self.loads = 0  # completed loads, for tests and metrics
        self.accelerated = 0  # runtime choices completed
        self._runtimes: dict[str, str] = {}  # model id -> the runtime it runs on now

    def info(self, model_id: str) -> ModelInfo | None:
        return self._info.get(model_id)

    def remember(self, info: ModelInfo) -> ModelInfo:
        if len(self._info) >= self.MAX_INFO:
            self._info.clear()
        self._info[info.id] = info
        return info

    def peek(self, model_id: str) -> Batcher | None:
        """The loaded model's batcher if cached (and now most recently used), else None."""
        with self._lock:
            batcher = self._items.get(model_id)
            if batcher is not None:
                self._items.move_to_end(model_id)
            return batcher

    def get(self, model_id: str, artifact_dir: Path) -> Batcher:
        """The model's batcher, loading it (once) if needed; blocks until loaded."""
        return self._future(model_id, artifact_dir).result()

    async def aget(self, model_id: str, artifact_dir: Path) -> Batcher:
        """As get(), awaiting the load instead of holding a thread while it runs."""
        if (cached := self.peek(model_id)) is not None:
            return cached
        return await asyncio.wrap_future(self._future(model_id, artifact_dir))

    def _future(self, model_id: str, artifact_dir: Path) -> Future:
        with self._lock:
            future: Future = Future()
            if (batcher := self._items.get(model_id)) is not None:
                self._items.move_to_end(model_id)
                future.set_result(batcher)
                return future
            if (loading := self._loading.get(model_id)) is not None:
                return loading
            self._loading[model_id] = future
        threading.Thread(
            target=self._load, args=(model_id, artifact_dir, future), name="model-load", daemon=True
        ).start()
        return future

    def _load(self, model_id: str, artifact_dir: Path, future: Future) -> None:
        try:
            # Eager first, so the first answer comes after the load alone; the runtime
            # choice (an export, a check, maybe a trial: seconds) follows in the
            # background, and the model switches over when it is ready.
            predictor = load_predictor(artifact_dir, device=self.device, accelerate=False)
        except BaseException as exc:  # every waiter gets the error; the next request retries
            with self._lock:
                del self._loading[model_id]
            future.set_exception(exc)
            return
        evicted = []
        with self._lock:
            batcher = Batcher(predictor, max_batch=self.max_batch)
            self._items[model_id] = batcher
            del self._loading[model_id]
            self.loads += 1
            MODEL_LOADS.inc()
            self._runtimes[model_id] = _runtime(predictor)
            LOADED.labels(self._runtimes[model_id]).inc()
            while len(self._items) > self.capacity:
                old_id, old_batcher = self._items.popitem(last=False)
                evicted.append(old_batcher)
                LOADED.labels(self._runtimes.pop(old_id)).dec()
        future.set_result(batcher)
        threading.Thread(
            target=self._accelerate,
            args=(model_id, batcher, artifact_dir),
            name="model-runtime",
            daemon=True,
        ).start()
        for old in evicted:
            old.close()
        if evicted:
            del old, evicted
            _release()

    def _accelerate(self, model_id: str, batcher: Batcher, artifact_dir: Path) -> None:
        """Move a loaded model onto its fastest runtime (predictor.accelerate swaps its
        forward pass in one assignment: requests in flight finish on either)."""
        predictor = batcher.predictor
        predictor.accelerate(runtime_dir(artifact_dir))
        with self._lock:
            if self._items.get(model_id) is batcher:  # not evicted meanwhile
                LOADED.labels(self._runtimes[model_id]).dec()
                self._runtimes[model_id] = _runtime(predictor)
                LOADED.labels(self._runtimes[model_id]).inc()
            self.accelerated += 1

    def runtime_of(self, model_id: str) -> str | None:
        with self._lock:
            return self._runtimes.get(model_id)

    def __len__(self) -> int:
        return len(self._items)


def model_info(models: ModelCache, model_id: str) -> ModelInfo | None:
    """The model's row as predict needs it, read once and then remembered by the cache
    (blocking: run it off the event loop); None when there is no such model."""
    with get_sessionmaker()() as session:
        model = registry.find(session=session, model_id=model_id)
        if model is None:
            return None
        return models.remember(
            ModelInfo(
                id=model.id, owner_id=model.owner_id, task=model.task, classes=tuple(model.classes)
            )
        )


def _release() -> None:
    """Hand freed memory back to the system. An evicted model's tensors and runtime
    session are freed, but glibc keeps the pages in its arenas (the ~57 MB per reload of
    issue 14); malloc_trim returns them. A no-op where there is no glibc."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
