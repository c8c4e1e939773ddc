"""A request cut short keeps what it finished: its retry writes only the unfinished reflections.

The cut is the one a deadline (504) or a disconnect makes: the scoring task is cancelled. It
happens here once the first few records reached the cache rather than after a fixed number of
seconds, so the test means the same thing on a fast and a slow machine.
"""

import asyncio

import pytest

from amr_client.schemas import ScoreRequest
from amr_sd.cache import MemoryCache
from amr_sd.scoring import Scorer

pytestmark = pytest.mark.integration

CUT_AFTER = 3  # records stored before the cut


class WatchedCache(MemoryCache):
    """The in-process cache, noting every record stored and when enough of them are."""

    def __init__(self):
        super().__init__()
        self.stored: dict[str, dict] = {}
        self.enough = asyncio.Event()

    async def set_many(self, items):
        await super().set_many(items)
        self.stored.update(items)
        if len(self.stored) >= CUT_AFTER:
            self.enough.set()


def test_a_cut_request_retried_generates_only_what_was_unfinished(vllm_engine, engine, run,
                                                                 example_groups):
    request = ScoreRequest.model_validate({
        "groups": example_groups[:6], "step": 0,
        "config": {"max_reflection_tokens": 48, "max_retries": 1}})
    cache = WatchedCache()
    scorer = Scorer(engine, cache=cache)

    async def cut():
        task = asyncio.ensure_future(scorer.score(request))
        await asyncio.wait({task, asyncio.ensure_future(cache.enough.wait())},
                           return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), "the whole request finished before the cut: nothing to resume"
        task.cancel()  # what the 504 deadline and a client disconnect do
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cut())
    finished = dict(cache.stored)
    assert vllm_engine.unfinished_requests() == 0  # the cut aborted the engine work
    requested = sum(1 for g in example_groups[:6] for r in g["rollouts"])  # all groups are mixed
    assert CUT_AFTER <= len(finished) < requested

    before = engine.generate_calls
    retry = run(scorer.score(request))
    stats = retry.stats
    assert stats.reflections_cached == len(finished)
    generated_now = [r.reflection for g in retry.groups for r in g.rollouts
                     if r.reflection is not None and not r.reflection.cached]
    # Only the unfinished rollouts wrote again, each as many times as its record says.
    assert stats.reflections_generated == sum(rec.attempts for rec in generated_now)
    assert engine.generate_calls - before == stats.reflections_generated
    assert len(generated_now) == stats.reflections_requested - len(finished)
    stored_again = {rec.model_dump(exclude={"cached"})["text"] for g in retry.groups
                    for r in g.rollouts if r.reflection and r.reflection.cached
                    for rec in [r.reflection]}
    assert stored_again == {rec["text"] for rec in finished.values()}
