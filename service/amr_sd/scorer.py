"""The AMR-SD pipeline (METHOD.md): scoring requests in, scored groups out.

The scorer owns ordering and batching; the maths lives in `algo/`, the engine behind
`engine.base.Engine`. All engine work of a request is submitted at once (every reflection of an
attempt round in one `generate`, every scoring sequence in one `score`), so vLLM's continuous
batching sees the whole batch; it never loops one sequence at a time.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import numpy as np

from amr_client.schemas import (
    BatchStats,
    Group,
    ReflectionRecord,
    Rollout,
    ScoredGroup,
    ScoredRollout,
    ScoreRequest,
    ScoreResponse,
    ScoringConfig,
    Timings,
)
from amr_sd.algo import advantage, reflection
from amr_sd.algo.context import render_prompt, splice, with_block
from amr_sd.cache import ReflectionCache, reflection_key
from amr_sd.engine.base import Adapter, Engine, GenerationParams
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
    leak_sources: list[list[int]] = field(default_factory=list)
    record: ReflectionRecord | None = None
    cache_key: str | None = None
    accepted_text: str | None = None
    student_logprobs: np.ndarray | None = None
    teacher_logprobs: np.ndarray | None = None

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

    @property
    def active(self) -> list[_Work]:
        return [w for g in self.groups for w in g if w.kind is not None]


class Scorer:
    def __init__(self, engine: Engine, defaults: ScoringConfig | None = None,
                 cache: ReflectionCache | None = None):
        self.engine = engine
        self.defaults = defaults or ScoringConfig()
        self.cache = cache
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
        return Plan(cfg, w, lambda_eff, gamma_eff, groups)

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
            # Short-circuit (METHOD step 2): exact GRPO with no engine work when nothing can change.
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
            reference_solution=reference_solution)
        w.writer_ids = render_prompt(tok, messages=[{"role": "user", "content": content}],
                                     prefill=reflection.opening_tag(w.kind))
        self._check_length(len(w.writer_ids), cfg.max_reflection_tokens, f"{w.path}",
                           "reflection writer prompt")

        # What a reflection must not state or copy: the verified answers and solutions.
        if ref and ref.answer:
            w.leak_answers.append(ref.answer)
        if ref and ref.solution:
            w.leak_sources.append(tok.encode(ref.solution, add_special_tokens=False))
        verified = [p for p in work if correct[p.index] and p.index != w.index]
        if w.kind == reflection.HINT:
            verified.append(w)  # a correct rollout is itself a verified solution
        for p in verified:
            if p.answer:
                w.leak_answers.append(p.answer)
            w.leak_sources.append(p.rollout.token_ids)

    def _teacher_prompt(self, w: _Work, text: str) -> list[int]:
        block = reflection.teacher_block(w.kind, text)
        if w.teacher_messages is not None:
            return render_prompt(self.tokenizer, messages=with_block(w.teacher_messages, block))
        return render_prompt(self.tokenizer, text=w.teacher_text + block)

    # ---------------------------------------------------------------- engine phases

    async def score(self, request: ScoreRequest, adapter: Adapter | None = None) -> ScoreResponse:
        """Score `request` with the engine's full weights, plus `adapter` if given.

        `request.policy` is the caller's to resolve (`policy.PolicyManager.serving`): it
        decides the adapter and holds the weights steady for the whole call.
        """
        t0 = time.perf_counter()
        plan = self.plan(request)
        active = plan.active
        generated, cached = await self._reflect(active, plan.config, adapter)
        t1 = time.perf_counter()
        await self._rescore([w for w in active if w.accepted_text is not None], adapter)
        t2 = time.perf_counter()
        response = self._assemble(request, plan, generated, cached)
        response.adapter = adapter.label if adapter is not None else None
        response.stats.timings = Timings(reflect_s=t1 - t0, score_s=t2 - t1,
                                         total_s=time.perf_counter() - t0)
        return response

    async def _reflect(self, active: list[_Work], cfg: ScoringConfig,
                       adapter: Adapter | None) -> tuple[int, int]:
        """Write, parse and filter reflections with retries: (generations run, cache hits)."""
        pending = []
        for w in active:
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
        cached = 0
        if self.cache is not None and pending:
            for w in pending:
                w.cache_key = self._cache_key(w, cfg, adapter)
            hits = await self.cache.get_many([w.cache_key for w in pending])
            misses = []
            for w, hit in zip(pending, hits):
                if hit is None:
                    misses.append(w)
                    continue
                cached += 1
                w.record = ReflectionRecord.model_validate({**hit, "cached": True})
                w.accepted_text = w.record.text if w.record.accepted else None
            pending = misses
        written = list(pending)
        generated = 0
        for attempt in range(cfg.max_retries + 1):
            if not pending:
                break
            temperature = cfg.reflection_temperature if attempt == 0 else cfg.retry_temperature
            by_kind = collections.defaultdict(list)
            for w in pending:
                by_kind[w.kind].append(w)
            batches = list(by_kind.items())
            # One generate call per kind (the stop string differs), both in flight together.
            results = await asyncio.gather(*(
                self.engine.generate(
                    [w.writer_ids for w in ws],
                    GenerationParams(max_tokens=cfg.max_reflection_tokens, temperature=temperature,
                                     stop=(reflection.closing_tag(kind),),
                                     # Retries must differ from the greedy first attempt and
                                     # stay reproducible where the engine takes a seed.
                                     seed=attempt if attempt else None),
                    adapter)
                for kind, ws in batches))
            generated += len(pending)
            pending = []
            for (kind, ws), gens in zip(batches, results):
                closing = reflection.closing_tag(kind)
                for w, gen in zip(ws, gens):
                    output = reflection.opening_tag(kind) + gen.text
                    # (ours) A writer that ends its turn (EOS) inside the open tag has finished
                    # its reflection; only one cut off by the token budget is unterminated.
                    if gen.finish_reason == "stop" and not gen.text.endswith(closing):
                        output += closing
                    if not self._accept(w, output, cfg):
                        pending.append(w)
        if self.cache is not None and written:
            await self.cache.set_many({w.cache_key: w.record.model_dump(exclude={"cached"})
                                       for w in written})
        return generated, cached

    def _cache_key(self, w: _Work, cfg: ScoringConfig, adapter: Adapter | None) -> str:
        # Everything the final record depends on: the writer's input, how it decodes, and what
        # the filter compares against. A changed template, policy or setting misses the cache.
        # An adapter joins the key only when there is one: keys of plain requests stay as they were.
        on_top = {} if adapter is None else {"adapter": [adapter.label, adapter.path]}
        return reflection_key(
            model_id=self.engine.model_id, policy_version=self.engine.policy_version, **on_top,
            template_version=reflection.TEMPLATE_VERSION, kind=w.kind,
            writer_prompt_ids=w.writer_ids,
            generation={"max_tokens": cfg.max_reflection_tokens,
                        "temperature": cfg.reflection_temperature,
                        "retry_temperature": cfg.retry_temperature, "max_retries": cfg.max_retries},
            leak_filter={"answers": w.leak_answers, "sources": w.leak_sources,
                         "ngram": cfg.ngram_overlap})

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
                source_token_ids=w.leak_sources, ngram=cfg.ngram_overlap)
        if reason is None:
            record.accepted, record.reject_reason = True, None
            w.accepted_text = text
            return True
        record.reject_reason = reason.value
        record.reject_reasons.append(reason.value)
        return False

    async def _rescore(self, work: list[_Work], adapter: Adapter | None) -> None:
        """Both teacher-forced passes for every rollout with a reflection, in one submission."""
        sequences, starts, slots = [], [], []
        for w in work:
            seq, start = splice(self._teacher_prompt(w, w.accepted_text), w.rollout.token_ids)
            sequences.append(seq), starts.append(start), slots.append((w, "teacher_logprobs"))
            if w.rollout.student_logprobs is None:
                seq, start = splice(w.student_prompt, w.rollout.token_ids)
                sequences.append(seq), starts.append(start), slots.append((w, "student_logprobs"))
            else:
                w.student_logprobs = np.asarray(w.rollout.student_logprobs, dtype=np.float64)
        if not sequences:
            return
        for (w, attr), values in zip(slots, await self.engine.score(sequences, starts, adapter)):
            setattr(w, attr, values)

    # ---------------------------------------------------------------- combine and report

    def _assemble(self, request: ScoreRequest, plan: Plan, generated: int, cached: int) -> ScoreResponse:
        cfg, ret = plan.config, request.returns
        out_groups = []
        cig_values, gated_counter = [], collections.Counter()
        gated_total = considered = nonfinite = response_tokens = 0
        abs_adv = abs_base = 0.0
        for group in plan.groups:
            scored = []
            for w in group:
                tokens = np.asarray(w.rollout.token_ids, dtype=np.int64)
                response_tokens += len(tokens)
                item = ScoredRollout(advantages=[], base_advantage=w.base_advantage)
                if w.teacher_logprobs is not None:
                    cig_hat, bad = advantage.clipped_cig(w.teacher_logprobs, w.student_logprobs,
                                                         kappa=cfg.kappa)
                    delta = advantage.gate(
                        cig_hat, w.base_advantage, lambda_eff=plan.lambda_eff,
                        gamma_eff=plan.gamma_eff, tau_pos=cfg.tau_pos, tau_neg=cfg.tau_neg,
                        never_gate=np.isin(tokens, self._special_ids))
                    adv = advantage.combine(w.base_advantage, delta)
                    gated = delta > 0
                    cig_values.append(cig_hat)
                    considered += len(tokens)
                    gated_total += int(gated.sum())
                    nonfinite += int(bad.sum())
                    gated_counter.update(tokens[gated].tolist())
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
                abs_adv += float(np.abs(adv).sum())
                abs_base += abs(w.base_advantage) * len(tokens)
                scored.append(item)
            out_groups.append(ScoredGroup(rollouts=scored))

        records = [w.record for w in plan.active]
        accepted = sum(r.accepted for r in records)
        reasons = collections.Counter(r.reject_reason for r in records if not r.accepted)
        cig_all = np.concatenate(cig_values) if cig_values else np.zeros(0)
        tokens_scored = sum(len(w.rollout.token_ids) * (2 if w.rollout.student_logprobs is None else 1)
                            for w in plan.active if w.teacher_logprobs is not None)
        stats = BatchStats(
            groups=len(plan.groups),
            rollouts=sum(len(g) for g in plan.groups),
            response_tokens=response_tokens,
            tokens_scored=tokens_scored,
            reflected_tokens=considered,
            gated_tokens=gated_total,
            gate_rate=gated_total / considered if considered else 0.0,
            reflections_requested=len(records),
            reflections_generated=generated,
            reflections_cached=cached,
            reflections_accepted=accepted,
            reflections_rejected=len(records) - accepted,
            acceptance_rate=accepted / len(records) if records else 0.0,
            reject_reasons=dict(reasons),
            cig_mean=float(cig_all.mean()) if cig_all.size else 0.0,
            cig_std=float(cig_all.std()) if cig_all.size else 0.0,
            nonfinite_cig=nonfinite,
            mean_abs_base_advantage=abs_base / response_tokens if response_tokens else 0.0,
            mean_abs_advantage=abs_adv / response_tokens if response_tokens else 0.0,
            top_gated_tokens=[(self.tokenizer.convert_ids_to_tokens(t), n)
                              for t, n in gated_counter.most_common(10)],
        )
        return ScoreResponse(
            model=self.engine.model_id, policy_version=self.engine.policy_version,
            template_version=reflection.TEMPLATE_VERSION, step=request.step,
            anneal_weight=plan.anneal_weight, groups=out_groups, stats=stats)

