"""Planning: a scoring request checked against the engine and turned into one immutable plan per
rollout, before the first engine call.

Everything that can make a request invalid for this engine (a token id outside the vocabulary, a
student, teacher or writer context past `max_model_len`) is found here and names its exact
field, so a bad request fails before any engine work and `amr-sd score` can check a whole file
first. The plan also holds what docs/method.md decides before the engine runs: the GRPO base
advantages (step 1), the anneal weight (step 9), which rollouts need no engine work at all
(step 2's short-circuits), and, for those that reflect, what their writers read and what the leak
filter must refuse (steps 3 and 5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from amr_client.schemas import Group, ReturnSwitches, Rollout, ScoreRequest, ScoringConfig
from amr_sd.algo import advantage, reflection
from amr_sd.algo.context import render_prompt, with_block
from amr_sd.errors import InvalidRequest, from_validation_error


def resolve_config(defaults: ScoringConfig, overrides: ScoringConfig | None) -> ScoringConfig:
    """The server's defaults with the fields a request sets on top, validated together."""
    if overrides is None:
        return defaults
    merged = {**defaults.model_dump(), **overrides.model_dump(exclude_unset=True)}
    try:
        return ScoringConfig.model_validate(merged)
    except Exception as exc:  # pydantic.ValidationError
        raise from_validation_error(exc, ("config",)) from None


@dataclass(frozen=True)
class Leaks:
    """What a reflection must not state or copy: the leak filter's inputs (docs/method.md step 5)."""

    answers: tuple[str, ...] = ()  # the reference's and the verified solutions' final answers
    sources: tuple[str, ...] = ()  # texts no long word run may be copied from
    mistakes: tuple[str, ...] = ()  # the wrong values a v2 critique must not restate


@dataclass(frozen=True, eq=False)
class RolloutPlan:
    """One rollout of the request. `kind` is None when it keeps its GRPO advantage with no engine
    work; `writer_ids` is None when it needs no writer (its `reflection_override` is the reflection).

    eq=False: each plan is its own identity, so the phases key what they return by it.
    """

    group: int
    index: int
    rollout: Rollout
    base_advantage: float
    student_prompt: list[int]
    kind: str | None = None
    # The teacher's prompt is the group's: its chat messages, or its plain text.
    teacher_messages: list[dict] | None = None
    teacher_text: str | None = None
    writer_ids: list[int] | None = None
    leaks: Leaks = Leaks()

    @property
    def path(self) -> str:
        return f"groups[{self.group}].rollouts[{self.index}]"

    def teacher_prompt(self, tokenizer, text: str) -> list[int]:
        """The teacher's context: the prompt with the reflection block `text` (docs/method.md step 6)."""
        block = reflection.teacher_block(self.kind, text)
        if self.teacher_messages is not None:
            return render_prompt(tokenizer, messages=with_block(self.teacher_messages, block))
        return render_prompt(tokenizer, text=self.teacher_text + block)


@dataclass(frozen=True)
class Plan:
    """A validated request: everything decided before the first engine call."""

    config: ScoringConfig
    anneal_weight: float
    lambda_eff: float
    gamma_eff: float
    groups: tuple[tuple[RolloutPlan, ...], ...]
    returns: ReturnSwitches

    @property
    def active(self) -> list[RolloutPlan]:
        """The rollouts that reflect, in request order."""
        return [r for g in self.groups for r in g if r.kind is not None]


@dataclass(frozen=True)
class _Described:
    """What every writer of a reflecting group reads, and the leak filter compares against."""

    group: Group
    messages: list[dict] | None
    problem: str
    texts: list[str]  # each response as the writer reads it
    answers: list[str | None]  # each response's final answer
    correct: list[bool]


class Planner:
    """Checks requests against one engine's vocabulary and length limit, and plans them."""

    def __init__(self, engine):
        self.engine = engine
        self.tokenizer = engine.tokenizer

    def plan(self, request: ScoreRequest, cfg: ScoringConfig) -> Plan:
        """`request` under the resolved config `cfg`, or InvalidRequest naming the bad field."""
        w = advantage.anneal_weight(request.step, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                                    decay_steps=cfg.decay_steps, exp_k=cfg.exp_k)
        lambda_eff, gamma_eff = cfg.lambda_pos * w, cfg.gamma_neg * w
        groups = tuple(self._group(g, group, cfg, lambda_eff, gamma_eff)
                       for g, group in enumerate(request.groups))
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

    def _group(self, g: int, group: Group, cfg: ScoringConfig, lambda_eff: float,
               gamma_eff: float) -> tuple[RolloutPlan, ...]:
        prompt = group.prompt
        messages = [m.model_dump() for m in prompt.messages] if prompt.messages else None
        if prompt.prompt_token_ids is not None:
            self._check_ids(prompt.prompt_token_ids, f"groups[{g}].prompt.prompt_token_ids")
            student_prompt = list(prompt.prompt_token_ids)
        else:
            student_prompt = render_prompt(self.tokenizer, messages=messages, text=prompt.text)

        rewards = np.array([r.reward for r in group.rollouts])
        try:
            base = advantage.grpo_advantages(rewards, norm_by_std=cfg.norm_by_std,
                                             std_unbiased=cfg.std_unbiased, eps=cfg.std_eps)
        except ValueError as exc:  # finite rewards whose advantages float64 cannot hold
            raise InvalidRequest(str(exc), field=f"groups[{g}].rollouts") from None
        plans = []
        for i, rollout in enumerate(group.rollouts):
            r = RolloutPlan(g, i, rollout, float(base[i]), student_prompt)
            self._check_ids(rollout.token_ids, f"{r.path}.token_ids")
            self._check_length(len(student_prompt), len(rollout.token_ids), f"{r.path}.token_ids", "prompt")
            plans.append(r)

        problem = messages[max(k for k, m in enumerate(messages) if m["role"] == "user")]["content"] \
            if messages else prompt.text
        described = None
        for r in list(plans):
            scale = lambda_eff if r.base_advantage > 0 else gamma_eff
            # Short-circuit (docs/method.md step 2): exact GRPO with no engine work when nothing
            # can change.
            if r.base_advantage == 0 or scale == 0:
                continue
            if described is None:
                described = self._describe(group, messages, problem, cfg)
            kind = reflection.HINT if r.base_advantage > 0 else reflection.CRITIQUE
            plans[r.index] = self._reflecting(r, kind, described, cfg)
        return tuple(plans)

    def _describe(self, group: Group, messages: list[dict] | None, problem: str,
                  cfg: ScoringConfig) -> _Described:
        """Response texts and final answers of a group, once, for writers and the leak filter."""
        texts = [r.text if r.text is not None else
                 self.tokenizer.decode(r.token_ids, skip_special_tokens=True) for r in group.rollouts]
        answers = [reflection.extract_answer(reflection.strip_think(text)) for text in texts]
        correct = [r.correct if r.correct is not None else r.reward >= cfg.success_threshold
                   for r in group.rollouts]
        return _Described(group, messages, problem, texts, answers, correct)

    def _reflecting(self, r: RolloutPlan, kind: str, described: _Described,
                    cfg: ScoringConfig) -> RolloutPlan:
        """`r` with a reflection (docs/method.md step 3): its teacher, its writer, its leak filter."""
        tok = self.tokenizer
        group = described.group
        if described.messages is not None:
            r = replace(r, kind=kind, teacher_messages=described.messages)
        else:
            r = replace(r, kind=kind, teacher_text=group.prompt.text)
        # Worst case for the teacher: the block around the longest reflection it could receive.
        override = r.rollout.reflection_override
        reflection_len = (len(tok.encode(override, add_special_tokens=False))
                          if override is not None else cfg.max_reflection_tokens)
        teacher_len = len(r.teacher_prompt(tok, "")) + reflection_len
        self._check_length(teacher_len, len(r.rollout.token_ids), f"{r.path}.token_ids",
                           "teacher prompt with reflection")
        if override is not None:
            return r

        # (ours) The shortest accepted peer: the least text to copy from, the lowest cost.
        peers = [j for j in range(len(group.rollouts)) if j != r.index and described.correct[j]]
        peer = min(peers, key=lambda j: len(group.rollouts[j].token_ids), default=None)
        peer_text = None
        if peer is not None:
            peer_text = reflection.strip_think(described.texts[peer])
        ref = group.reference
        reference_solution = ref.solution if (ref and cfg.allow_reference_in_writer) else None
        content = reflection.writer_prompt(
            kind, problem=described.problem, rollout_text=described.texts[r.index],
            feedback=r.rollout.feedback, peer_text=peer_text if kind == reflection.CRITIQUE else None,
            reference_solution=reference_solution, template=cfg.reflection_template)
        writer_ids = render_prompt(tok, messages=[{"role": "user", "content": content}],
                                   prefill=reflection.opening_tag(kind))
        self._check_length(len(writer_ids), cfg.max_reflection_tokens, f"{r.path}",
                           "reflection writer prompt")
        return replace(r, writer_ids=writer_ids, leaks=_leaks(r.index, kind, described, peer_text, cfg))


def _leaks(i: int, kind: str, described: _Described, peer_text: str | None,
           cfg: ScoringConfig) -> Leaks:
    """What rollout `i`'s reflection must not state or copy: the verified answers and solutions."""
    ref = described.group.reference
    answers, sources = [], []
    if ref and ref.answer:
        answers.append(ref.answer)
    if ref and ref.solution:
        sources.append(ref.solution)
    verified = [j for j, correct in enumerate(described.correct) if correct and j != i]
    if kind == reflection.HINT:
        verified.append(i)  # a correct rollout is itself a verified solution
    for j in verified:
        if described.answers[j]:
            answers.append(described.answers[j])
        sources.append(described.texts[j])
    mistakes = ()
    # v2 asks a critique to write the faulty step out right; one that also restates the
    # attempt's wrong value raises it in the teacher (docs/fidelity.md), so it is refused.
    if kind == reflection.CRITIQUE and cfg.reflection_template == "v2" and peer_text:
        mistakes = reflection.mistaken_numbers(reflection.strip_think(described.texts[i]), peer_text)
    return Leaks(tuple(answers), tuple(sources), tuple(mistakes))
