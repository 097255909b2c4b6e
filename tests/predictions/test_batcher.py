"""The predict batcher: one thread per model, batches across requests, never loses one.

The predictor here is a small recording stand-in (the batcher is what is under test);
the real predictors are exercised over HTTP in tests/api and tests/e2e.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.predictions.service import Batcher


class Recorder:
    """Answers each input x with label str(x); remembers the size of every pass."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[int] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def predict(self, inputs: list, top_k: int = 1) -> list[dict]:
        with self.lock:
            self.batches.append(len(inputs))
        time.sleep(self.delay)
        if self.fail:
            raise ValueError("boom")
        return [
            {"label": str(x), "score": 1.0, "top_k": [{"label": str(x), "score": 1.0}] * 3}
            for x in inputs
        ]


def test_a_lone_request_does_not_wait_for_company() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=16, max_delay=2.0)

    async def main() -> float:
        t = time.perf_counter()
        with batcher.arrival() as arrival:
            out = await batcher.submit([7], 1, arrival)
        assert out == [{"label": "7", "score": 1.0, "top_k": [{"label": "7", "score": 1.0}]}]
        return time.perf_counter() - t

    assert asyncio.run(main()) < 1.0  # max_delay is 2 s: it did not wait
    batcher.close()


def test_requests_still_being_read_join_one_batch_in_input_order() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=16, max_delay=5.0)

    async def client(i: int) -> list[dict]:
        with batcher.arrival() as arrival:
            await asyncio.sleep(0.05 * i)  # reading the body takes a while
            return await batcher.submit([i, i + 100], 3, arrival)

    async def main() -> list[list[dict]]:
        return await asyncio.gather(*(client(i) for i in range(4)))

    t = time.perf_counter()
    results = asyncio.run(main())
    assert time.perf_counter() - t < 2.0  # no one waited the full 5 s
    assert recorder.batches == [8]  # all four requests, one pass
    for i, out in enumerate(results):
        assert [r["label"] for r in out] == [str(i), str(i + 100)]
        assert len(out[0]["top_k"]) == 3


def test_batches_are_capped_at_max_batch_and_a_failed_read_stops_the_wait() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder, max_batch=4, max_delay=5.0)

    async def main() -> None:
        with pytest.raises(RuntimeError), batcher.arrival():
            raise RuntimeError("a 4xx while reading the body")
        outs = await asyncio.gather(*(batcher.submit([i], 1) for i in range(10)))
        assert [o[0]["label"] for o in outs] == [str(i) for i in range(10)]

    t = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - t < 2.0  # the failed arrival left nothing to wait for
    assert sum(recorder.batches) == 10 and max(recorder.batches) <= 4


def test_a_failing_pass_fails_each_of_its_requests() -> None:
    batcher = Batcher(Recorder(fail=True), max_batch=8, max_delay=0.01)

    async def main() -> list:
        return await asyncio.gather(
            *(batcher.submit([i], 1) for i in range(3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in results)


def test_an_evicted_batcher_still_answers_what_it_is_given() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder, max_batch=2, max_delay=0.01)

    async def main() -> None:
        first = asyncio.gather(*(batcher.submit([i], 1) for i in range(5)))
        await asyncio.sleep(0.01)
        batcher.close()  # evicted with requests queued
        assert [o[0]["label"] for o in await first] == [str(i) for i in range(5)]
        # a request that took the batcher before eviction submits afterwards
        assert (await batcher.submit([42], 1))[0]["label"] == "42"

    asyncio.run(main())
    assert sum(recorder.batches) == 6
