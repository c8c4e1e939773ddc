"""The AMR-SD pipeline (docs/method.md): scoring requests in, scored groups out.

`Scorer.score` follows the method's order. It plans the request with no engine work (`plan`:
steps 1 to 3 and 9, the short-circuits of step 2) and looks up the reflections already final
(overrides, cache hits). Then, per group: it writes and filters the rest (`reflect`: steps 4 and
5), rescores with both teacher-forced passes (`passes`: step 6) and combines them into advantages
(`combine`: steps 7, 8 and 10). Last comes the response with its batch stats (`stats`). Each phase
returns what it made; the maths lives in `algo/`, the engine behind `engine.base.ScoringEngine`.

All engine work of a request is in flight at once: every rollout's reflection writer, and each
group's scoring passes as soon as that group's reflections are settled, so vLLM's continuous
batching sees the whole batch and generation overlaps scoring. It never waits for one sequence
before submitting the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from amr_client.schemas import (ReflectionRecord, ScoredGroup, ScoreRequest, ScoreResponse,
                                ScoringConfig, Timings)
from amr_sd import mathcheck
from amr_sd.cache import ReflectionCache
from amr_sd.engine.base import BASE_POLICY, Policy, ScoringEngine
from amr_sd.scoring import combine
from amr_sd.scoring.passes import Logprobs, Rescorer
from amr_sd.scoring.plan import Plan, Planner, RolloutPlan, resolve_config
from amr_sd.scoring.reflect import Reflector, accepted_text
from amr_sd.scoring.stats import BatchTally

OnGroup = Callable[[int, ScoredGroup], Awaitable[None]]


@dataclass(frozen=True)
class _Run:
    """One request in flight: what each of its group tasks reads."""

    plan: Plan
    policy: Policy
    settled: dict[RolloutPlan, ReflectionRecord]  # records final before any writer ran
    keys: dict[RolloutPlan, str]  # reflection-cache keys of the others
    rescorer: Rescorer
    on_group: OnGroup | None


@dataclass(frozen=True)
class _Group:
    """One group once rescored: the final record of each rollout that reflects, the passes of
    each with an accepted reflection, and, once combined, its answer and share of the stats."""

    records: dict[RolloutPlan, ReflectionRecord]
    logprobs: dict[RolloutPlan, Logprobs]
    settled_at: float  # perf_counter when its last reflection settled
    scored: tuple[ScoredGroup, BatchTally] | None = None


class Scorer:
    """AMR-SD over one engine: `plan` checks a request without engine work, `score` scores it."""

    def __init__(self, engine: ScoringEngine, defaults: ScoringConfig | None = None,
                 cache: ReflectionCache | None = None, score_cache: ReflectionCache | None = None):
        mathcheck.require()  # the leak filter never runs without its equivalence check
        self.engine = engine
        self.defaults = defaults or ScoringConfig()
        self.cache = cache
        self.score_cache = score_cache
        self.tokenizer = engine.tokenizer
        self._special_ids = np.array(sorted(set(self.tokenizer.all_special_ids)), dtype=np.int64)
        self._planner = Planner(engine)
        self._reflector = Reflector(engine, cache)

    def resolve_config(self, overrides: ScoringConfig | None) -> ScoringConfig:
        return resolve_config(self.defaults, overrides)

    def plan(self, request: ScoreRequest) -> Plan:
        """Validate everything that needs the engine's vocabulary and limits; no engine calls."""
        return self._planner.plan(request, self.resolve_config(request.config))

    async def score(self, request: ScoreRequest, policy: Policy = BASE_POLICY,
                    on_group: OnGroup | None = None) -> ScoreResponse:
        """Score `request` with the engine's full weights (labelled `policy.version`), plus
        `policy.adapter` if there is one.

        Every rollout writes its reflection (retries included) on its own, and a group is
        scored as soon as all of its reflections are settled, while other groups still write
        theirs: generation and scoring overlap, and the engine sees all of it at once. Each
        finished group is passed to `on_group(index, group)` as it completes (streaming).
        Each final reflection record reaches the cache the moment it is final, so a retry of
        a request cut short (deadline, disconnect, restart) writes only what was unfinished.

        `request.policy` is the caller's to resolve (`policy.PolicyManager.serving`): it
        decides `policy` and holds the weights steady for the whole call.
        """
        t0 = time.perf_counter()
        # Chat templating and tokenisation of a large batch take seconds: off the event loop.
        plan = await asyncio.to_thread(self.plan, request)
        settled, keys = await self._reflector.look_up(plan, policy)
        run = _Run(plan, policy, settled, keys, Rescorer(self.engine, self.score_cache, policy),
                   on_group)
        taus = plan.config.tau_pos, plan.config.tau_neg
        try:
            groups = await _all_or_first_error([asyncio.ensure_future(self._group(run, g, taus))
                                                for g in range(len(plan.groups))])
            if plan.config.gate_rate_target is not None:
                taus, groups = await self._gate_calibrated(run, groups)
        finally:
            run.rescorer.cancel()
        response = await asyncio.to_thread(self._response, request, plan, policy,
                                           [done.scored for done in groups], taus)
        response.adapter = policy.adapter.label if policy.adapter is not None else None
        reflect_s = max((done.settled_at for done in groups), default=0.0)
        response.stats.timings = Timings(reflect_s=reflect_s - t0 if reflect_s else 0.0,
                                         score_s=run.rescorer.busy_s,
                                         total_s=time.perf_counter() - t0)
        return response

    async def _group(self, run: _Run, g: int, taus: tuple[float, float]) -> _Group:
        """Group `g`: its writers, then its passes, then (without `gate_rate_target`) its answer."""
        group = run.plan.groups[g]
        writing = [r for r in group if r.kind and r not in run.settled]
        writers = [asyncio.ensure_future(self._reflector.write(r, run.plan.config, run.policy.adapter,
                                                               run.keys.get(r)))
                   for r in writing]
        # Not gather: a failed writer must cancel its siblings, or their engine work outlives
        # the request.
        written = dict(zip(writing, await _all_or_first_error(writers)))
        settled_at = time.perf_counter()
        records = {r: written[r] if r in written else run.settled[r] for r in group if r.kind}
        reflections = {r: text for r, record in records.items()
                       if (text := accepted_text(record)) is not None}
        done = _Group(records, await run.rescorer.rescore(reflections), settled_at)
        if run.plan.config.gate_rate_target is None:  # else in `_gate_calibrated`, after every group
            done = await self._combine(run, g, done, taus)
        return done

    async def _combine(self, run: _Run, g: int, done: _Group, taus: tuple[float, float]) -> _Group:
        scored = await asyncio.to_thread(combine.scored_group, run.plan, g, done.records,
                                         done.logprobs, taus, self._special_ids)
        if run.on_group is not None:
            await run.on_group(g, scored[0])
        return replace(done, scored=scored)

    async def _gate_calibrated(self, run: _Run, groups: list[_Group]
                               ) -> tuple[tuple[float, float], list[_Group]]:
        """(ours) τ per branch from the whole request's CIG (gate_rate_target), then every group."""
        logprobs = {r: lp for done in groups for r, lp in done.logprobs.items()}
        taus = await asyncio.to_thread(combine.calibrated_taus, run.plan, logprobs, self._special_ids)
        return taus, [await self._combine(run, g, done, taus) for g, done in enumerate(groups)]

    def _response(self, request: ScoreRequest, plan: Plan, policy: Policy,
                  scored: list[tuple[ScoredGroup, BatchTally]],
                  taus: tuple[float, float]) -> ScoreResponse:
        total = BatchTally()
        for _, tally in scored:
            total += tally
        return ScoreResponse(
            model=self.engine.model_id, policy_version=policy.version,
            template_version=plan.config.reflection_template, step=request.step,
            anneal_weight=plan.anneal_weight, groups=[group for group, _ in scored],
            stats=total.batch_stats(*taus, self.tokenizer.convert_ids_to_tokens))


async def _all_or_first_error(tasks: list[asyncio.Future]) -> list:
    """Wait for every task and return their results; on the first failure (or our own
    cancellation) cancel the rest and wait for them, so no engine work outlives the request,
    then raise that failure."""
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        pending, done = set(tasks), set()
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    # Read every failure, not only the one raised: asyncio logs "exception was never retrieved"
    # for the others, which would look like a second fault.
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if errors:
        raise errors[0]
    return [t.result() for t in tasks]
