"""The predict batcher: worker threads per model, batches across requests, never loses one.

The predictor here is a small recording stand-in (the batcher is what is under test);
the real predictors are exercised over HTTP in tests/api and tests/e2e.
"""

from __future__ import annotations

import asyncio
import threading
import time

from app.predictions.service import Batcher


class Recorder:
    """Answers each input x with label str(x); remembers the size of every pass, and the
    most passes that ran at once. `parallel_runs` as a predictor declares it."""

    def __init__(self, delay: float = 0.0, fail: bool = False, parallel_runs: int = 1):
        self.batches: list[int] = []
        self.alone: list[bool] = []  # per pass: whether the batcher said it runs alone
        self.delay, self.fail, self.parallel_runs = delay, fail, parallel_runs
        self.lock = threading.Lock()
        self.running = self.most_running = 0

    def predict(self, inputs: list, top_k: int = 1, **kw) -> list[dict]:
        with self.lock:
            self.batches.append(len(inputs))
            self.alone.append(kw.get("alone", False))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        if self.fail:
            raise ValueError("boom")
        return [
            {"label": str(x), "score": 1.0, "top_k": [{"label": str(x), "score": 1.0}] * 3}
            for x in inputs
        ]


def test_a_lone_request_does_not_wait_for_company() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch=16)

    async def main() -> float:
        t = time.perf_counter()
        out = await batcher.submit([7], 1)
        assert out == [{"label": "7", "score": 1.0, "top_k": [{"label": "7", "score": 1.0}]}]
        return time.perf_counter() - t

    assert asyncio.run(main()) < 0.5
    batcher.close()


def test_requests_that_arrive_during_a_pass_make_the_next_one_in_input_order() -> None:
    """No gathering window: the first request runs alone at once; the three submitted
    while it runs are taken together the moment the runtime is free."""
    recorder = Recorder(delay=0.2)
    batcher = Batcher(recorder, max_batch=16)

    async def client(i: int) -> list[dict]:
        await asyncio.sleep(0.05 * bool(i))  # the first alone, the others during its pass
        return await batcher.submit([i, i + 100], 3)

    async def main() -> list[list[dict]]:
        return await asyncio.gather(*(client(i) for i in range(4)))

    t = time.perf_counter()
    results = asyncio.run(main())
    assert time.perf_counter() - t < 0.8  # two passes of 0.2 s, not four
    assert recorder.batches == [2, 6]
    for i, out in enumerate(results):
        assert [r["label"] for r in out] == [str(i), str(i + 100)]
        assert len(out[0]["top_k"]) == 3


def test_a_large_request_is_split_over_free_workers_and_put_back_in_order() -> None:
    recorder = Recorder(delay=0.2, parallel_runs=2)
    batcher = Batcher(recorder, max_batch=16)

    async def main() -> list[dict]:
        await batcher.submit([0], 1)  # both workers started, now free
        await asyncio.sleep(0.05)
        return await batcher.submit(list(range(16)), 2)

    t = time.perf_counter()
    out = asyncio.run(main())
    assert [r["label"] for r in out] == [str(i) for i in range(16)]
    assert all(len(r["top_k"]) == 2 for r in out)
    assert recorder.batches[1:] == [8, 8] and recorder.most_running == 2
    assert time.perf_counter() - t < 0.7  # the two halves ran side by side
    batcher.close()


def test_a_second_pass_starts_beside_a_running_one_only_for_enough_inputs() -> None:
    """Two images queued while a pass runs wait for it (a pass of one or two images costs
    nearly as much as one of four); four or more start a second pass at once."""
    recorder = Recorder(delay=0.2, parallel_runs=2)
    batcher = Batcher(recorder, max_batch=16)

    async def after(delay: float, n: int) -> list[dict]:
        await asyncio.sleep(delay)
        return await batcher.submit(list(range(n)), 1)

    async def main(n: int) -> None:
        await asyncio.gather(after(0, 1), after(0.05, n))

    asyncio.run(main(2))
    assert recorder.batches == [1, 2] and recorder.most_running == 1
    recorder.batches.clear()
    asyncio.run(main(4))
    assert recorder.batches == [1, 4] and recorder.most_running == 2
    batcher.close()


def test_a_pass_alone_may_take_every_core_and_passes_side_by_side_one_each() -> None:
    """With a runtime for passes alone (predictor.forward_alone), a pass runs alone when
    nothing else runs and it takes everything queued; passes that share the cores (a
    large request split, or one that starts beside a running pass) do not."""
    recorder = Recorder(delay=0.2, parallel_runs=2)
    recorder.forward_alone = object()
    batcher = Batcher(recorder, max_batch=16)

    async def after(delay: float, n: int) -> list[dict]:
        await asyncio.sleep(delay)
        return await batcher.submit(list(range(n)), 1)

    async def main() -> None:
        await after(0, 1)  # alone
        await after(0.05, 16)  # split over both workers
        await asyncio.gather(after(0, 1), after(0.05, 4))  # alone, then one beside it

    asyncio.run(main())
    assert recorder.batches == [1, 8, 8, 1, 4]
    assert recorder.alone == [True, False, False, True, False]
    batcher.close()
    # Without such a runtime the batcher never asks for one.
    plain = Recorder(parallel_runs=2)
    plain_batcher = Batcher(plain, max_batch=16)
    asyncio.run(plain_batcher.submit([1], 1))
    assert plain.alone == [False]
    plain_batcher.close()


def test_one_worker_unless_the_predictor_runs_passes_side_by_side() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder, max_batch=2)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit([i], 1) for i in range(8)))

    asyncio.run(main())
    assert recorder.most_running == 1 and sum(recorder.batches) == 8


def test_batches_are_capped_at_max_batch() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder, max_batch=4)

    async def main() -> None:
        outs = await asyncio.gather(*(batcher.submit([i], 1) for i in range(10)))
        assert [o[0]["label"] for o in outs] == [str(i) for i in range(10)]

    asyncio.run(main())
    assert sum(recorder.batches) == 10 and max(recorder.batches) <= 4


def test_a_failing_pass_fails_each_of_its_requests() -> None:
    batcher = Batcher(Recorder(fail=True), max_batch=8)

    async def main() -> list:
        return await asyncio.gather(
            *(batcher.submit([i], 1) for i in range(3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in results)


def test_an_evicted_batcher_still_answers_what_it_is_given() -> None:
    recorder = Recorder(delay=0.05)
    batcher = Batcher(recorder, max_batch=2)

    async def main() -> None:
        first = asyncio.gather(*(batcher.submit([i], 1) for i in range(5)))
        await asyncio.sleep(0.01)
        batcher.close()  # evicted with requests queued
        assert [o[0]["label"] for o in await first] == [str(i) for i in range(5)]
        # a request that took the batcher before eviction submits afterwards
        assert (await batcher.submit([42], 1))[0]["label"] == "42"

    asyncio.run(main())
    assert sum(recorder.batches) == 6
