"""The batcher without a model: batches form under load, keys never mix, the queue is bounded, cancels drop work."""

import asyncio
import threading
import time

import pytest

pytest.importorskip("fastapi")

from guardrail.serve.batching import Batcher, QueueFull


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


class Recorder:
    def __init__(self, delay=0.05, gate=None):
        self.batches = []
        self.delay = delay
        self.gate = gate

    def __call__(self, payloads, key):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append((key, list(payloads)))
        return [f"{key}:{p}" for p in payloads]


def test_concurrent_jobs_share_batches_and_keep_their_results():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=4, max_wait_s=0.05, max_queue=64)
        b.start()
        out = await asyncio.gather(*(b.submit(i, "k") for i in range(10)))
        await b.drain()
        return out, b.stats

    out, stats = run(main())
    assert out == [f"k:{i}" for i in range(10)]
    assert max(len(p) for _, p in rec.batches) == 4 and len(rec.batches) < 10
    assert sorted(x for _, p in rec.batches for x in p) == list(range(10))
    assert stats.batches == len(rec.batches) and stats.batched_jobs == 10


def test_jobs_of_different_keys_never_share_a_batch():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=8, max_wait_s=0.05, max_queue=64)
        b.start()
        out = await asyncio.gather(*(b.submit(i, "ab"[i % 2]) for i in range(8)))
        await b.drain()
        return out

    assert run(main()) == [f"{'ab'[i % 2]}:{i}" for i in range(8)]
    assert all(all(x % 2 == (key == "b") for x in p) for key, p in rec.batches)


def test_batch_size_one_serves_one_request_at_a_time():
    rec = Recorder(delay=0.0)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.05, max_queue=64)
        b.start()
        await asyncio.gather(*(b.submit(i, "k") for i in range(5)))
        await b.drain()

    run(main())
    assert [len(p) for _, p in rec.batches] == [1] * 5


def test_full_queue_refuses_with_retry_after_and_cancel_drops_queued_jobs():
    gate = threading.Event()
    rec = Recorder(delay=0.0, gate=gate)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.0, max_queue=2)
        b.start()
        running = asyncio.ensure_future(b.submit("first", "k"))
        while b._running == 0:  # the first job is on the (blocked) model
            await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(b.submit(x, "k")) for x in ("second", "third")]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as err:
            await b.submit("fourth", "k")
        assert err.value.retry_after >= 1
        queued[0].cancel()  # the caller of "second" went away
        await asyncio.sleep(0.01)
        gate.set()
        results = [await running, await queued[1]]
        await b.drain()
        return results, b.stats

    results, stats = run(main())
    assert results == ["k:first", "k:third"]
    assert [p for _, p in rec.batches] == [["first"], ["third"]]  # "second" never reached the model
    assert stats.cancelled == 1 and stats.rejected == 1


def test_an_error_reaches_every_job_of_its_batch_and_the_batcher_goes_on():
    calls = []

    def flaky(payloads, key):
        calls.append(list(payloads))
        if len(calls) == 1:
            raise ValueError("boom")
        return list(payloads)

    async def main():
        b = Batcher(flaky, max_batch_size=4, max_wait_s=0.05, max_queue=8)
        b.start()
        first = await asyncio.gather(*(b.submit(i, "k") for i in range(2)), return_exceptions=True)
        second = await b.submit(9, "k")
        await b.drain()
        return first, second

    first, second = run(main())
    assert all(isinstance(e, ValueError) for e in first) and second == 9


def test_drain_finishes_queued_work_then_refuses():
    rec = Recorder(delay=0.02)

    async def main():
        b = Batcher(rec, max_batch_size=2, max_wait_s=0.0, max_queue=8)
        b.start()
        jobs = [asyncio.ensure_future(b.submit(i, "k")) for i in range(4)]
        await asyncio.sleep(0)
        await b.drain(timeout_s=5)
        with pytest.raises(QueueFull):
            await b.submit(5, "k")
        return [j.result() for j in jobs]

    assert run(main()) == [f"k:{i}" for i in range(4)]
