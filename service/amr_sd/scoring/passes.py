"""Teacher-forced passes (docs/method.md step 6): the teacher's and the student's log-probabilities
of the same response token ids, read back from the score cache or computed by the engine.

A group is rescored as soon as its reflections settle, while other groups still write theirs, so
generation and scoring overlap. Groups that settle together (one engine step finished their last
reflections) share one engine call through the `Coalescer` instead of making one each. A pass the
score cache holds (the same tokens under the same weights, scored before: a resent group) is read
back bit for bit instead of scored again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from amr_sd.algo.context import splice
from amr_sd.cache import ReflectionCache, pack_logprobs, score_context, score_key, unpack_logprobs
from amr_sd.engine.base import Policy, ScoringEngine
from amr_sd.scoring.plan import RolloutPlan


@dataclass(frozen=True)
class Logprobs:
    """A rollout's two passes, (T,) each, and where they came from."""

    teacher: np.ndarray
    student: np.ndarray  # the caller's `student_logprobs` when it sent them
    scored: int  # passes the engine ran
    cached: int  # passes read from the score cache


@dataclass(frozen=True)
class _Pass:
    """One teacher-forced pass: what the engine scores, and its score-cache key (None without a
    score cache)."""

    rollout: RolloutPlan
    teacher: bool  # the teacher's pass, else the student's
    sequence: list[int]
    start: int
    key: str | None = None


class Rescorer:
    """One request's passes under one policy: its score-cache context and its coalescer."""

    def __init__(self, engine: ScoringEngine, score_cache: ReflectionCache | None, policy: Policy):
        self.engine = engine
        self.score_cache = score_cache
        self.policy = policy
        # What a pass's logprobs depend on besides its tokens: the weights and how the engine
        # computes.
        self._context = None if score_cache is None else score_context(
            model_id=engine.model_id, policy_version=policy.version,
            adapter=None if policy.adapter is None else [policy.adapter.label, policy.adapter.path],
            **engine.score_identity)
        self._coalescer = Coalescer(self._score)

    @property
    def busy_s(self) -> float:
        """Seconds with a scoring call in flight."""
        return self._coalescer.busy_s

    def cancel(self) -> None:
        """Abort scoring calls still running (the request ended early)."""
        self._coalescer.cancel()

    async def rescore(self, reflections: dict[RolloutPlan, str]) -> dict[RolloutPlan, Logprobs]:
        """Both passes for every rollout of a group with an accepted reflection (its text).

        A pass the score cache holds is read back; the rest go to the engine, and their results
        into the cache.
        """
        if not reflections:
            return {}
        passes, supplied = await asyncio.to_thread(self._passes, reflections)
        hits = [None] * len(passes)
        if self.score_cache is not None:
            stored = await self.score_cache.get_many([p.key for p in passes])
            hits = [None if v is None else unpack_logprobs(v, len(p.sequence) - p.start)
                    for p, v in zip(passes, stored)]
        missing = [p for p, hit in zip(passes, hits) if hit is None]
        scored = iter(await self._coalescer.submit([(p.sequence, p.start) for p in missing])
                      if missing else ())
        values = [hit if hit is not None else next(scored) for hit in hits]
        if self.score_cache is not None and missing:
            stores = await asyncio.to_thread(
                lambda: {p.key: pack_logprobs(v) for p, v, hit in zip(passes, values, hits)
                         if hit is None})
            await self.score_cache.set_many(stores)

        teacher, student = {}, dict(supplied)
        ran, cached = collections.Counter(), collections.Counter()
        for p, value, hit in zip(passes, values, hits):
            (teacher if p.teacher else student)[p.rollout] = value
            (ran if hit is None else cached)[p.rollout] += 1
        return {r: Logprobs(teacher[r], student[r], ran[r], cached[r]) for r in reflections}

    def _passes(self, reflections: dict[RolloutPlan, str]
                ) -> tuple[list[_Pass], dict[RolloutPlan, np.ndarray]]:
        """The passes a group needs, the teacher's for every rollout and the student's where the
        caller did not send `student_logprobs`; and the student logprobs it did send."""
        passes, supplied = [], {}
        tokenizer = self.engine.tokenizer
        for r, text in reflections.items():
            passes.append(_pass(self._context, r, True, r.teacher_prompt(tokenizer, text)))
            if r.rollout.student_logprobs is None:
                passes.append(_pass(self._context, r, False, r.student_prompt))
            else:
                supplied[r] = np.asarray(r.rollout.student_logprobs, dtype=np.float64)
        return passes, supplied

    async def _score(self, items: list[tuple[list[int], int]]) -> list[np.ndarray]:
        return await self.engine.score([seq for seq, _ in items], [start for _, start in items],
                                       self.policy.adapter)


def _pass(context: bytes | None, r: RolloutPlan, teacher: bool, prompt: list[int]) -> _Pass:
    sequence, start = splice(prompt, r.rollout.token_ids)
    key = None if context is None else score_key(context, sequence, start)
    return _Pass(r, teacher, sequence, start, key)


class Coalescer:
    """Scoring passes of groups that settle within one short window go to the engine together.

    A group is scored as soon as its reflections settle; groups settling together (the same
    engine step finished their last reflections) share one engine call instead of one each.
    """

    WINDOW_S = 0.005

    def __init__(self, submit: Callable[[list], Awaitable[list]]):
        self._submit = submit
        self._waiting: list[tuple[list, asyncio.Future]] = []
        self._flushes: set[asyncio.Task] = set()
        self._timer: asyncio.Task | None = None
        self.busy_s = 0.0  # seconds with a scoring call in flight (overlaps counted once each)

    async def submit(self, items: list) -> list:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._timer is None:
            self._timer = asyncio.ensure_future(self._flush_soon())
            self._flushes.add(self._timer)
            self._timer.add_done_callback(self._flushes.discard)
        return await future

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.WINDOW_S)
        batch, self._waiting, self._timer = self._waiting, [], None
        batch = [(items, f) for items, f in batch if not f.cancelled()]
        if not batch:
            return
        start = time.perf_counter()
        try:
            results = await self._submit([item for items, _ in batch for item in items])
        except BaseException as exc:
            for _, f in batch:
                if not f.done():
                    f.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise  # cancelled: the task ends cancelled
            return  # the waiters hold the error; nobody awaits this task to hear it again
        finally:
            self.busy_s += time.perf_counter() - start
        k = 0
        for items, f in batch:
            if not f.done():
                f.set_result(results[k:k + len(items)])
            k += len(items)

    def cancel(self) -> None:
        """Abort scoring calls still running (the request ended early): vLLM aborts them."""
        for task in list(self._flushes):
            task.cancel()
