"""Predict: loaded models stay cached (LRU), concurrent requests are micro-batched.

A request's inputs are decoded and checked in the request's own thread (images decoded,
text checked, tabular rows encoded: `predictor.check`); the batcher then gathers
whatever arrives within `max_delay` (up to `max_batch` inputs) across requests and runs
one forward pass for all of them in a worker thread, off the event loop.
"""

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.training.inference import Predictor, TabularPredictor, TextPredictor, load_predictor

AnyPredictor = Predictor | TextPredictor | TabularPredictor


@dataclass
class _Pending:
    inputs: list[Any]
    top_k: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers concurrent requests for one model into batches."""

    def __init__(self, predictor: AnyPredictor, *, max_batch: int, max_delay: float):
        self.predictor, self.max_batch, self.max_delay = predictor, max_batch, max_delay
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def submit(self, inputs: list[Any], top_k: int) -> list[dict]:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(inputs, top_k, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].inputs)
            deadline = loop.time() + self.max_delay
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                batch.append(item)
                size += len(item.inputs)
            inputs = [x for p in batch for x in p.inputs]
            top_k = max(p.top_k for p in batch)
            try:
                results = await asyncio.to_thread(self.predictor.predict, inputs, top_k)
            except Exception as exc:  # hand the failure to every waiting request
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            start = 0
            for p in batch:
                mine = results[start : start + len(p.inputs)]
                start += len(p.inputs)
                for r in mine:
                    r["top_k"] = r["top_k"][: p.top_k]
                if not p.future.done():
                    p.future.set_result(mine)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


class ModelCache:
    """Loaded predictors by model id, least recently used evicted past `capacity`."""

    def __init__(self, *, capacity: int, max_batch: int, max_delay: float, device: str = "cpu"):
        self.capacity, self.max_batch, self.max_delay = capacity, max_batch, max_delay
        self.device = device
        self._items: OrderedDict[str, Batcher] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, artifact_dir: Path) -> Batcher:
        with self._lock:
            if model_id in self._items:
                self._items.move_to_end(model_id)
                return self._items[model_id]
        predictor = load_predictor(artifact_dir, device=self.device)  # slow: outside the lock
        with self._lock:
            batcher = self._items.get(model_id)
            if batcher is None:
                batcher = Batcher(predictor, max_batch=self.max_batch, max_delay=self.max_delay)
                self._items[model_id] = batcher
            self._items.move_to_end(model_id)
            while len(self._items) > self.capacity:
                _, evicted = self._items.popitem(last=False)
                evicted.close()
            return batcher

    def __len__(self) -> int:
        return len(self._items)
