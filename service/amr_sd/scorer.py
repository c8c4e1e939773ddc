"""The AMR-SD pipeline (docs/method.md): scoring requests in, scored groups out.

The scorer owns ordering and batching; the maths lives in `algo/`, the engine behind
`engine.base.Engine`. All engine work of a request is in flight at once: every rollout's
reflection writer, and each group's scoring passes as soon as that group's reflections are
settled, so vLLM's continuous batching sees the whole batch and generation overlaps scoring.
It never waits for one sequence before submitting the next.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from amr_client.schemas import (
    BatchStats,
    BranchStats,
    Group,
    ReflectionRecord,
    ReturnSwitches,
    Rollout,
    ScoredGroup,
    ScoredRollout,
    ScoreRequest,
    ScoreResponse,
    ScoringConfig,
    Timings,
)
from amr_sd import mathcheck
from amr_sd.algo import advantage, reflection
from amr_sd.algo.context import render_prompt, splice, with_block
from amr_sd.cache import (ReflectionCache, pack_logprobs, reflection_key, score_context, score_key,
                          unpack_logprobs)
from amr_sd.engine.base import BASE_POLICY, Adapter, Engine, GenerationParams, Policy
from amr_sd.errors import InvalidRequest, from_validation_error


@dataclass
class _Work:
    """One rollout's path through the pipeline."""

    group: int
    index: int
    rollout: Rollout
    base_advantage: float
    student_prompt: list[int]
    text: str = ""  # the response as the writer reads it (filled only when a group reflects)
    answer: str | None = None  # its final answer, for the leak filter
    kind: str | None = None  # set when the rollout needs a reflection
    teacher_messages: list[dict] | None = None
    teacher_text: str | None = None
    writer_ids: list[int] | None = None
    # What its reflection must not state or copy (the leak filter's inputs).
    leak_answers: list[str] = field(default_factory=list)
    leak_sources: list[str] = field(default_factory=list)
    leak_mistakes: list[str] = field(default_factory=list)
    record: ReflectionRecord | None = None
    cache_key: str | None = None
    accepted_text: str | None = None
    settled: bool = False  # its reflection record is final (accepted, rejected, cached, override)
    student_logprobs: np.ndarray | None = None
    teacher_logprobs: np.ndarray | None = None
    cached_passes: int = 0  # scoring passes read from the score cache instead of the engine

    @property
    def path(self) -> str:
        return f"groups[{self.group}].rollouts[{self.index}]"


@dataclass
class Plan:
    """A validated request: everything decided before the first engine call."""

    config: ScoringConfig
    anneal_weight: float
    lambda_eff: float
    gamma_eff: float
    groups: list[list[_Work]]
    returns: ReturnSwitches

    @property
    def active(self) -> list[_Work]:
        return [w for g in self.groups for w in g if w.kind is not None]


class Scorer:
    def __init__(self, engine: Engine, defaults: ScoringConfig | None = None,
                 cache: ReflectionCache | None = None, score_cache: ReflectionCache | None = None):
        mathcheck.require()  # the leak filter never runs without its equivalence check
        self.engine = engine
        self.defaults = defaults or ScoringConfig()
        self.cache = cache
        self.score_cache = score_cache
        self.tokenizer = engine.tokenizer
        self._special_ids = np.array(sorted(set(self.tokenizer.all_special_ids)), dtype=np.int64)

    # ---------------------------------------------------------------- planning (no engine work)

    def resolve_config(self, overrides: ScoringConfig | None) -> ScoringConfig:
        if overrides is None:
            return self.defaults
        merged = {**self.defaults.model_dump(), **overrides.model_dump(exclude_unset=True)}
        try:
            return ScoringConfig.model_validate(merged)
        except Exception as exc:  # pydantic.ValidationError
            raise from_validation_error(exc, ("config",)) from None

    def plan(self, request: ScoreRequest) -> Plan:
        """Validate everything that needs the engine's vocabulary and limits; no engine calls."""
        cfg = self.resolve_config(request.config)
        w = advantage.anneal_weight(request.step, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                                    decay_steps=cfg.decay_steps, exp_k=cfg.exp_k)
        lambda_eff, gamma_eff = cfg.lambda_pos * w, cfg.gamma_neg * w
        groups = [self._plan_group(g, group, cfg, lambda_eff, gamma_eff)
                  for g, group in enumerate(request.groups)]
        return Plan(cfg, w, lambda_eff, gamma_eff, groups, request.returns)

    def _check_ids(self, ids: list[int], where: str) -> None:
        limit = self.engine.vocab_size
        for t, tok in enumerate(ids):
            if not 0 <= tok < limit:
                raise InvalidRequest(
                    f"token id {tok} is outside the model's vocabulary (size {limit})",
                    field=f"{where}[{t}]")

    def _check_length(self, prompt_len: int, response_len: int, where: str, what: str) -> None:
        total = prompt_len + response_len
        if total > self.engine.max_model_len:
            raise InvalidRequest(
                f"{what} ({prompt_len} tokens) + response ({response_len} tokens) = {total} tokens "
                f"exceeds max_model_len {self.engine.max_model_len}", field=where)

    def _plan_group(self, g: int, group: Group, cfg: ScoringConfig, lambda_eff: float,
                    gamma_eff: float) -> list[_Work]:
        prompt = group.prompt
        messages = [m.model_dump() for m in prompt.messages] if prompt.messages else None
        if prompt.prompt_token_ids is not None:
            self._check_ids(prompt.prompt_token_ids, f"groups[{g}].prompt.prompt_token_ids")
            student_prompt = list(prompt.prompt_token_ids)
        else:
            student_prompt = render_prompt(self.tokenizer, messages=messages, text=prompt.text)

        rewards = np.array([r.reward for r in group.rollouts])
        base = advantage.grpo_advantages(rewards, norm_by_std=cfg.norm_by_std,
                                         std_unbiased=cfg.std_unbiased, eps=cfg.std_eps)
        correct = [r.correct if r.correct is not None else r.reward >= cfg.success_threshold
                   for r in group.rollouts]
        work = []
        for i, rollout in enumerate(group.rollouts):
            w = _Work(g, i, rollout, float(base[i]), student_prompt)
            self._check_ids(rollout.token_ids, f"{w.path}.token_ids")
            self._check_length(len(student_prompt), len(rollout.token_ids), f"{w.path}.token_ids", "prompt")
            work.append(w)

        problem = messages[max(k for k, m in enumerate(messages) if m["role"] == "user")]["content"] \
            if messages else prompt.text
        described = False
        for w in work:
            scale = lambda_eff if w.base_advantage > 0 else gamma_eff
            # Short-circuit (docs/method.md step 2): exact GRPO with no engine work when nothing
            # can change.
            if w.base_advantage == 0 or scale == 0:
                continue
            w.kind = reflection.HINT if w.base_advantage > 0 else reflection.CRITIQUE
            if not described:
                self._describe(work)
                described = True
            self._plan_reflection(w, work, correct, problem, group, cfg, messages)
        return work

    def _describe(self, work: list[_Work]) -> None:
        """Response texts and final answers of a group, once, for writers and the leak filter."""
        for p in work:
            r = p.rollout
            p.text = r.text if r.text is not None else \
                self.tokenizer.decode(r.token_ids, skip_special_tokens=True)
            p.answer = reflection.extract_answer(reflection.strip_think(p.text))

    def _plan_reflection(self, w: _Work, work: list[_Work], correct: list[bool], problem: str,
                         group: Group, cfg: ScoringConfig, messages: list[dict] | None) -> None:
        tok = self.tokenizer
        rollout = w.rollout
        if messages is not None:
            w.teacher_messages = messages
        else:
            w.teacher_text = group.prompt.text
        # Worst case for the teacher: the block around the longest reflection it could receive.
        override = rollout.reflection_override
        reflection_len = (len(tok.encode(override, add_special_tokens=False))
                          if override is not None else cfg.max_reflection_tokens)
        teacher_len = len(self._teacher_prompt(w, "")) + reflection_len
        self._check_length(teacher_len, len(rollout.token_ids), f"{w.path}.token_ids",
                           "teacher prompt with reflection")
        if override is not None:
            return

        # (ours) The shortest accepted peer: the least text to copy from, the lowest cost.
        peers = [p for p in work if p.index != w.index and correct[p.index]]
        peer = min(peers, key=lambda p: len(p.rollout.token_ids), default=None)
        peer_text = None
        if peer is not None:
            peer_text = reflection.strip_think(peer.text)
        ref = group.reference
        reference_solution = ref.solution if (ref and cfg.allow_reference_in_writer) else None
        content = reflection.writer_prompt(
            w.kind, problem=problem, rollout_text=w.text, feedback=rollout.feedback,
            peer_text=peer_text if w.kind == reflection.CRITIQUE else None,
            reference_solution=reference_solution, template=cfg.reflection_template)
        w.writer_ids = render_prompt(tok, messages=[{"role": "user", "content": content}],
                                     prefill=reflection.opening_tag(w.kind))
        self._check_length(len(w.writer_ids), cfg.max_reflection_tokens, f"{w.path}",
                           "reflection writer prompt")

        # What a reflection must not state or copy: the verified answers and solutions.
        if ref and ref.answer:
            w.leak_answers.append(ref.answer)
        if ref and ref.solution:
            w.leak_sources.append(ref.solution)
        verified = [p for p in work if correct[p.index] and p.index != w.index]
        if w.kind == reflection.HINT:
            verified.append(w)  # a correct rollout is itself a verified solution
        for p in verified:
            if p.answer:
                w.leak_answers.append(p.answer)
            w.leak_sources.append(p.text)
        # v2 asks a critique to write the faulty step out right; one that also restates the
        # attempt's wrong value raises it in the teacher (docs/fidelity.md), so it is refused.
        if w.kind == reflection.CRITIQUE and cfg.reflection_template == "v2" and peer_text:
            w.leak_mistakes = reflection.mistaken_numbers(reflection.strip_think(w.text),
                                                          peer_text)

    def _teacher_prompt(self, w: _Work, text: str) -> list[int]:
        block = reflection.teacher_block(w.kind, text)
        if w.teacher_messages is not None:
            return render_prompt(self.tokenizer, messages=with_block(w.teacher_messages, block))
        return render_prompt(self.tokenizer, text=w.teacher_text + block)

    # ---------------------------------------------------------------- engine phases

    async def score(self, request: ScoreRequest, policy: Policy = BASE_POLICY,
                    on_group: Callable[[int, ScoredGroup], Awaitable[None]] | None = None
                    ) -> ScoreResponse:
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
        adapter = policy.adapter
        t0 = time.perf_counter()
        # Chat templating and tokenisation of a large batch take seconds: off the event loop.
        plan = await asyncio.to_thread(self.plan, request)
        run = _Run(plan, policy, _Coalescer(functools.partial(self._score_sequences, adapter)))
        await self._look_up(run)
        tasks = [asyncio.ensure_future(self._group(run, g, on_group)) for g in range(len(plan.groups))]
        try:
            await _all_or_first_error(tasks)
            if run.calibrated:
                await self._gate_calibrated(run, on_group)
        finally:
            run.coalescer.cancel()
        response = await asyncio.to_thread(self._response, request, plan, run)
        response.adapter = adapter.label if adapter is not None else None
        response.stats.timings = Timings(reflect_s=run.reflect_s - t0 if run.reflect_s else 0.0,
                                         score_s=run.coalescer.busy_s,
                                         total_s=time.perf_counter() - t0)
        return response

    async def _look_up(self, run: "_Run") -> None:
        """Overrides and cache hits settle at once; one cache read for the whole request."""
        cfg = run.plan.config
        pending = []
        for w in run.plan.active:
            override = w.rollout.reflection_override
            if override is None:
                w.record = ReflectionRecord(kind=w.kind, accepted=False)
                pending.append(w)
            elif override.strip():
                w.accepted_text = override.strip()
                w.record = ReflectionRecord(kind=w.kind, text=w.accepted_text, accepted=True,
                                            source="override")
            else:
                w.record = ReflectionRecord(kind=w.kind, accepted=False, source="override",
                                            reject_reason=reflection.RejectReason.EMPTY.value,
                                            reject_reasons=[reflection.RejectReason.EMPTY.value])
        if self.cache is not None and pending:
            for w in pending:
                w.cache_key = self._cache_key(w, cfg, run.policy)
            hits = await self.cache.get_many([w.cache_key for w in pending])
            for w, hit in zip(pending, hits):
                if hit is None:
                    continue
                run.cached += 1
                w.record = ReflectionRecord.model_validate({**hit, "cached": True})
                w.accepted_text = w.record.text if w.record.accepted else None
                w.settled = True
        for w in run.plan.active:
            w.settled = w.settled or w.rollout.reflection_override is not None

    async def _group(self, run: "_Run", g: int,
                     on_group: Callable[[int, ScoredGroup], Awaitable[None]] | None) -> None:
        work = run.plan.groups[g]
        # Not gather: a failed writer must cancel its siblings, or their engine work outlives
        # the request.
        await _all_or_first_error([asyncio.ensure_future(self._reflect(run, w))
                                   for w in work if w.kind and not w.settled])
        run.reflect_s = max(run.reflect_s, time.perf_counter())
        await self._rescore(run, [w for w in work if w.kind and w.accepted_text is not None])
        if not run.calibrated:  # else gated in `_gate_calibrated`, once every group is rescored
            await self._finish_group(run, g, on_group)

    async def _finish_group(self, run: "_Run", g: int,
                            on_group: Callable[[int, ScoredGroup], Awaitable[None]] | None) -> None:
        run.scored[g] = await asyncio.to_thread(self._scored_group, run, run.plan.groups[g])
        if on_group is not None:
            await on_group(g, run.scored[g][0])

    async def _gate_calibrated(self, run: "_Run",
                               on_group: Callable[[int, ScoredGroup], Awaitable[None]] | None) -> None:
        """(ours) τ per branch from the whole request's CIG (gate_rate_target), then every group."""
        run.tau_pos, run.tau_neg = await asyncio.to_thread(self._calibrated_taus, run.plan)
        for g in range(len(run.plan.groups)):
            await self._finish_group(run, g, on_group)

    def _calibrated_taus(self, plan: Plan) -> tuple[float, float]:
        branches: dict[bool, list[np.ndarray]] = {True: [], False: []}
        for w in plan.active:
            if w.teacher_logprobs is not None:
                cig_hat, _, gateable = self._cig(w, plan.config)
                branches[w.base_advantage > 0].append(cig_hat[gateable])
        return tuple(advantage.calibrated_tau(np.concatenate(branches[side]) if branches[side]
                                              else [], plan.config.gate_rate_target, positive=side)
                     for side in (True, False))

    def _cig(self, w: _Work, cfg: ScoringConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clipped CIG, its non-finite mask, and which tokens the gate may fire on."""
        cig_hat, bad = advantage.clipped_cig(w.teacher_logprobs, w.student_logprobs,
                                             kappa=cfg.kappa)
        tokens = np.asarray(w.rollout.token_ids, dtype=np.int64)
        gateable = ~np.isin(tokens, self._special_ids)
        if cfg.cig_correction == "student_trend":
            cig_hat = advantage.remove_student_trend(cig_hat, w.student_logprobs, gateable & ~bad,
                                                     kappa=cfg.kappa)
        return cig_hat, bad, gateable

    async def _reflect(self, run: "_Run", w: _Work) -> None:
        """Write, parse and filter one rollout's reflection with retries, then cache the record."""
        cfg = run.plan.config
        for attempt in range(cfg.max_retries + 1):
            temperature = cfg.reflection_temperature if attempt == 0 else cfg.retry_temperature
            params = GenerationParams(
                max_tokens=cfg.max_reflection_tokens, temperature=temperature,
                stop=(reflection.closing_tag(w.kind),),
                # Retries must differ from the greedy first attempt and stay reproducible where
                # the engine takes a seed.
                seed=attempt if attempt else None,
                # (ours) A reflection that announces an answer is rejected whatever follows, so
                # its writer stops there and the retry starts at once.
                abandon_when=reflection.announces_answer)
            gen = (await self.engine.generate([w.writer_ids], params, run.adapter))[0]
            run.generated += 1
            output = reflection.opening_tag(w.kind) + gen.text
            # (ours) A writer that ends its turn (EOS) inside the open tag has finished its
            # reflection, and an abandoned one is judged on what it wrote; only one cut off by
            # the token budget is unterminated.
            if gen.finish_reason in ("stop", "abandoned") and \
                    not gen.text.endswith(reflection.closing_tag(w.kind)):
                output += reflection.closing_tag(w.kind)
            if await asyncio.to_thread(self._accept, w, output, cfg):
                break
        w.settled = True
        if self.cache is not None:
            await self.cache.set_many({w.cache_key: w.record.model_dump(exclude={"cached"})})

    def _cache_key(self, w: _Work, cfg: ScoringConfig, policy: Policy) -> str:
        # Everything the final record depends on: the writer's input, how it decodes, and what
        # the filter compares against. A changed template, policy or setting misses the cache.
        # An adapter joins the key only when there is one: keys of plain requests stay as they were.
        adapter = policy.adapter
        on_top = {} if adapter is None else {"adapter": [adapter.label, adapter.path]}
        return reflection_key(
            model_id=self.engine.model_id, policy_version=policy.version, **on_top,
            template_version=cfg.reflection_template, kind=w.kind,
            writer_prompt_ids=w.writer_ids,
            generation={"max_tokens": cfg.max_reflection_tokens,
                        "temperature": cfg.reflection_temperature,
                        "retry_temperature": cfg.retry_temperature, "max_retries": cfg.max_retries},
            leak_filter={"answers": w.leak_answers, "sources": w.leak_sources,
                         "mistakes": w.leak_mistakes, "ngram": cfg.ngram_overlap,
                         "version": reflection.FILTER_VERSION})

    def _accept(self, w: _Work, output: str, cfg: ScoringConfig) -> bool:
        record = w.record
        record.attempts += 1
        text, reason = reflection.parse_reflection(w.kind, output)
        # Keep what the writer said even when it is rejected: users need to see why.
        record.text = text if text is not None else \
            output[len(reflection.opening_tag(w.kind)):].strip() or None
        if reason is None:
            reason = reflection.leak_reason(
                text, reflection_token_ids=self.tokenizer.encode(text, add_special_tokens=False),
                max_reflection_tokens=cfg.max_reflection_tokens, answers=w.leak_answers,
                sources=w.leak_sources, ngram=cfg.ngram_overlap, mistakes=w.leak_mistakes,
                equal=mathcheck.equal)
        if reason is None:
            record.accepted, record.reject_reason = True, None
            w.accepted_text = text
            return True
        record.reject_reason = reason.value
        record.reject_reasons.append(reason.value)
        return False

    async def _rescore(self, run: "_Run", work: list[_Work]) -> None:
        """Both teacher-forced passes for every rollout of a group with a reflection.

        A pass the score cache holds (the same tokens under the same weights, scored before) is
        read back; the rest go to the engine, and their results into the cache.
        """
        if not work:
            return
        passes = await asyncio.to_thread(self._passes, run, work)
        if not passes:
            return
        hits = [None] * len(passes)
        if self.score_cache is not None:
            stored = await self.score_cache.get_many([p.key for p in passes])
            hits = [None if v is None else unpack_logprobs(v, len(p.sequence) - p.start)
                    for p, v in zip(passes, stored)]
        missing = [p for p, hit in zip(passes, hits) if hit is None]
        scored = iter(await run.coalescer.submit([(p.sequence, p.start) for p in missing])
                      if missing else ())
        for p, hit in zip(passes, hits):
            setattr(p.work, p.field, hit if hit is not None else next(scored))
            if hit is not None:
                p.work.cached_passes += 1
                run.scores_cached += 1
        if self.score_cache is not None and missing:
            values = await asyncio.to_thread(
                lambda: {p.key: pack_logprobs(getattr(p.work, p.field)) for p in missing})
            await self.score_cache.set_many(values)

    def _passes(self, run: "_Run", work: list[_Work]) -> list["_Pass"]:
        """The teacher-forced passes a group needs: the teacher's for every rollout, the
        student's where the caller did not send `student_logprobs`."""
        context = None
        if self.score_cache is not None:
            adapter = run.adapter
            context = score_context(
                model_id=self.engine.model_id, policy_version=run.policy.version,
                adapter=None if adapter is None else [adapter.label, adapter.path],
                **self.engine.score_identity)
        passes = []
        for w in work:
            passes.append(_Pass(w, "teacher_logprobs",
                                *splice(self._teacher_prompt(w, w.accepted_text), w.rollout.token_ids)))
            if w.rollout.student_logprobs is None:
                passes.append(_Pass(w, "student_logprobs", *splice(w.student_prompt, w.rollout.token_ids)))
            else:
                w.student_logprobs = np.asarray(w.rollout.student_logprobs, dtype=np.float64)
        if context is not None:
            for p in passes:
                p.key = score_key(context, p.sequence, p.start)
        return passes

    async def _score_sequences(self, adapter: Adapter | None,
                               items: list[tuple[list[int], int]]) -> list[np.ndarray]:
        return await self.engine.score([seq for seq, _ in items], [start for _, start in items],
                                       adapter)

    # ---------------------------------------------------------------- combine and report

    def _scored_group(self, run: "_Run", group: list[_Work]) -> tuple[ScoredGroup, "_Tally"]:
        """Combine one group's passes into advantages (algo/), and what the batch stats need."""
        plan, ret = run.plan, run.returns
        cfg, tally = plan.config, _Tally()
        scored = []
        for w in group:
            tokens = np.asarray(w.rollout.token_ids, dtype=np.int64)
            tally.response_tokens += len(tokens)
            item = ScoredRollout(advantages=[], base_advantage=w.base_advantage)
            if w.teacher_logprobs is not None:
                cig_hat, bad, gateable = self._cig(w, cfg)
                delta = advantage.gate(
                    cig_hat, w.base_advantage, lambda_eff=plan.lambda_eff,
                    gamma_eff=plan.gamma_eff, tau_pos=run.tau_pos, tau_neg=run.tau_neg,
                    never_gate=~gateable)
                adv = advantage.combine(w.base_advantage, delta)
                gated = delta > 0
                tally.cig.append(cig_hat)
                tally.reflected += len(tokens)
                tally.gated += int(gated.sum())
                branch = tally.positive if w.base_advantage > 0 else tally.negative
                branch.rollouts += 1
                branch.gated += int(gated.sum())
                branch.cig.append(cig_hat[gateable])
                tally.nonfinite += int(bad.sum())
                tally.gated_ids.update(tokens[gated].tolist())
                passes = 2 if w.rollout.student_logprobs is None else 1
                tally.scored += len(tokens) * (passes - w.cached_passes)
                if ret.cig:
                    item.cig, item.gated = cig_hat.tolist(), gated.tolist()
                if ret.logprobs:
                    item.student_logprobs = w.student_logprobs.tolist()
                    item.teacher_logprobs = w.teacher_logprobs.tolist()
            else:
                # Exactly GRPO (G4): the same float for every token, no arithmetic on it.
                adv = np.full(len(tokens), w.base_advantage)
            item.advantages = adv.tolist()
            if ret.reflections:
                item.reflection = w.record
            tally.abs_adv += float(np.abs(adv).sum())
            tally.abs_base += abs(w.base_advantage) * len(tokens)
            scored.append(item)
        return ScoredGroup(rollouts=scored), tally

    def _response(self, request: ScoreRequest, plan: Plan, run: "_Run") -> ScoreResponse:
        t = _Tally.total(tally for _, tally in run.scored)
        records = [w.record for w in plan.active]
        accepted = sum(r.accepted for r in records)
        reasons = collections.Counter(r.reject_reason for r in records if not r.accepted)
        cig_all = np.concatenate(t.cig) if t.cig else np.zeros(0)
        stats = BatchStats(
            groups=len(plan.groups),
            rollouts=sum(len(g) for g in plan.groups),
            response_tokens=t.response_tokens,
            tokens_scored=t.scored,
            reflected_tokens=t.reflected,
            gated_tokens=t.gated,
            gate_rate=t.gated / t.reflected if t.reflected else 0.0,
            reflections_requested=len(records),
            reflections_generated=run.generated,
            reflections_cached=run.cached,
            scores_cached=run.scores_cached,
            reflections_accepted=accepted,
            reflections_rejected=len(records) - accepted,
            acceptance_rate=accepted / len(records) if records else 0.0,
            reject_reasons=dict(reasons),
            cig_mean=float(cig_all.mean()) if cig_all.size else 0.0,
            cig_std=float(cig_all.std()) if cig_all.size else 0.0,
            nonfinite_cig=t.nonfinite,
            mean_abs_base_advantage=t.abs_base / t.response_tokens if t.response_tokens else 0.0,
            mean_abs_advantage=t.abs_adv / t.response_tokens if t.response_tokens else 0.0,
            top_gated_tokens=[(self.tokenizer.convert_ids_to_tokens(i), n)
                              for i, n in t.gated_ids.most_common(10)],
            positive=t.positive.stats(run.tau_pos), negative=t.negative.stats(run.tau_neg),
        )
        return ScoreResponse(
            model=self.engine.model_id, policy_version=run.policy.version,
            template_version=plan.config.reflection_template, step=request.step,
            anneal_weight=plan.anneal_weight, groups=[group for group, _ in run.scored],
            stats=stats)


@dataclass
class _Pass:
    """One teacher-forced pass: which rollout field it fills, what the engine scores, and its
    score-cache key (None without a score cache)."""

    work: _Work
    field: str  # "teacher_logprobs" or "student_logprobs"
    sequence: list[int]
    start: int
    key: str | None = None


@dataclass
class _Branch:
    """One side of the gate: its rollouts' gated counts and CIG on the tokens it may gate."""

    rollouts: int = 0
    gated: int = 0
    cig: list = field(default_factory=list)

    def add(self, other: "_Branch") -> None:
        self.rollouts += other.rollouts
        self.gated += other.gated
        self.cig += other.cig

    def stats(self, tau: float) -> BranchStats:
        cig = np.concatenate(self.cig) if self.cig else np.zeros(0)
        if not cig.size:
            return BranchStats(rollouts=self.rollouts, tau=tau)
        p01, p05, p50, p95, p99 = np.quantile(cig, (0.01, 0.05, 0.5, 0.95, 0.99))
        return BranchStats(rollouts=self.rollouts, reflected_tokens=int(cig.size), tau=tau,
                           gated_tokens=self.gated, gate_rate=self.gated / cig.size,
                           cig_p01=p01, cig_p05=p05, cig_p50=p50, cig_p95=p95, cig_p99=p99)


@dataclass
class _Tally:
    """One group's share of the batch stats; `total` adds them up."""

    response_tokens: int = 0
    scored: int = 0
    reflected: int = 0
    gated: int = 0
    nonfinite: int = 0
    abs_adv: float = 0.0
    abs_base: float = 0.0
    cig: list = field(default_factory=list)
    gated_ids: collections.Counter = field(default_factory=collections.Counter)
    positive: _Branch = field(default_factory=_Branch)
    negative: _Branch = field(default_factory=_Branch)

    @classmethod
    def total(cls, tallies) -> "_Tally":
        out = cls()
        for t in tallies:
            for name in ("response_tokens", "scored", "reflected", "gated", "nonfinite",
                         "abs_adv", "abs_base"):
                setattr(out, name, getattr(out, name) + getattr(t, name))
            out.cig += t.cig
            out.gated_ids.update(t.gated_ids)
            out.positive.add(t.positive)
            out.negative.add(t.negative)
        return out


@dataclass
class _Run:
    """One request in flight: its plan, counters, and the groups scored so far."""

    plan: Plan
    policy: Policy
    coalescer: "_Coalescer"
    generated: int = 0
    cached: int = 0
    scores_cached: int = 0  # passes read from the score cache
    reflect_s: float = 0.0  # perf_counter when the last reflection settled
    scored: list = field(default_factory=list)
    # The gate's margins: the config's, or with gate_rate_target the request's calibrated ones,
    # known only once every group is rescored.
    tau_pos: float = 0.0
    tau_neg: float = 0.0

    def __post_init__(self):
        self.scored = [None] * len(self.plan.groups)
        self.tau_pos, self.tau_neg = self.plan.config.tau_pos, self.plan.config.tau_neg

    @property
    def calibrated(self) -> bool:
        return self.plan.config.gate_rate_target is not None

    @property
    def returns(self):
        return self.plan.returns

    @property
    def adapter(self) -> Adapter | None:
        return self.policy.adapter


class _Coalescer:
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
            raise
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


async def _all_or_first_error(tasks: list[asyncio.Future]) -> None:
    """Wait for every task; on the first failure (or our own cancellation) cancel the rest and
    wait for them, so no engine work outlives the request, then raise that failure."""
    if not tasks:
        return
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
