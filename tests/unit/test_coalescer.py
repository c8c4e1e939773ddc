"""The coalescer's failure path: an engine error reaches every waiting group, once."""

from __future__ import annotations

import asyncio
import gc

from amr_sd.scoring.passes import Coalescer


def test_an_engine_error_reaches_every_waiter_and_leaves_no_stray_task_error():
    unretrieved = []

    async def fail(items):
        raise RuntimeError("engine lost")

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unretrieved.append(context))
        coalescer = Coalescer(fail)
        results = await asyncio.gather(coalescer.submit([1]), coalescer.submit([2, 3]),
                                       return_exceptions=True)
        await asyncio.sleep(0)
        gc.collect()  # an unretrieved task exception is reported when the task is collected
        await asyncio.sleep(0)
        return results

    results = asyncio.run(main())
    assert [str(r) for r in results] == ["engine lost", "engine lost"]
    assert all(isinstance(r, RuntimeError) for r in results)
    assert unretrieved == []


def test_the_waiters_share_one_engine_call_in_order():
    calls = []

    async def echo(items):
        calls.append(list(items))
        return [item * 10 for item in items]

    async def main():
        coalescer = Coalescer(echo)
        return await asyncio.gather(coalescer.submit([1]), coalescer.submit([2, 3]))

    assert asyncio.run(main()) == [[10], [20, 30]] and calls == [[1, 2, 3]]
