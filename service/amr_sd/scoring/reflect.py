"""Reflections: written by the policy, filtered, cached (docs/method.md steps 4 and 5).

Writing is the expensive generation step of a request, so each rollout writes on its own and
retries the moment its attempt is rejected: one slow or rejected writer never holds back the
others, and the engine sees every writer of the batch at once. A final record, accepted or not,
reaches the reflection cache the moment it is final, so a request cut short (deadline,
disconnect, restart) and sent again writes only what it had not finished. The cache key names
everything the record depends on, so a changed template, policy or setting never reads a stale
one.
"""

from __future__ import annotations

import asyncio

from amr_client.schemas import ReflectionRecord, ScoringConfig
from amr_sd import mathcheck
from amr_sd.algo import reflection
from amr_sd.cache import ReflectionCache, reflection_key
from amr_sd.engine.base import Adapter, GenerationParams, Policy, ScoringEngine
from amr_sd.scoring.plan import Plan, RolloutPlan


def accepted_text(record: ReflectionRecord) -> str | None:
    """The reflection the teacher reads, or None: the rollout keeps its GRPO advantage."""
    return record.text if record.accepted else None


class Reflector:
    """Settles each planned rollout's reflection record: override, cache hit, or its writer."""

    def __init__(self, engine: ScoringEngine, cache: ReflectionCache | None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.cache = cache

    async def look_up(self, plan: Plan, policy: Policy
                      ) -> tuple[dict[RolloutPlan, ReflectionRecord], dict[RolloutPlan, str]]:
        """The records final before any writer runs (overrides and cache hits), and the cache
        keys of the rest (none without a cache). One cache read for the whole request."""
        cfg = plan.config
        settled, pending = {}, []
        for r in plan.active:
            override = r.rollout.reflection_override
            if override is None:
                pending.append(r)
            elif override.strip():
                settled[r] = ReflectionRecord(kind=r.kind, text=override.strip(), accepted=True,
                                              source="override")
            else:
                settled[r] = ReflectionRecord(kind=r.kind, accepted=False, source="override",
                                              reject_reason=reflection.RejectReason.EMPTY.value,
                                              reject_reasons=[reflection.RejectReason.EMPTY.value],
                                              rejected_texts=[""])
        keys = {}
        if self.cache is not None and pending:
            keys = {r: self._key(r, cfg, policy) for r in pending}
            hits = await self.cache.get_many(list(keys.values()))
            for r, hit in zip(pending, hits):
                if hit is not None:
                    settled[r] = ReflectionRecord.model_validate({**hit, "cached": True})
        return settled, keys

    async def write(self, r: RolloutPlan, cfg: ScoringConfig, adapter: Adapter | None,
                    key: str | None) -> ReflectionRecord:
        """Write, parse and filter one rollout's reflection with retries, then cache the record."""
        record = ReflectionRecord(kind=r.kind, accepted=False)
        for attempt in range(cfg.max_retries + 1):
            temperature = cfg.reflection_temperature if attempt == 0 else cfg.retry_temperature
            params = GenerationParams(
                max_tokens=cfg.max_reflection_tokens, temperature=temperature,
                stop=(reflection.closing_tag(r.kind),),
                # Retries must differ from the greedy first attempt and stay reproducible where
                # the engine takes a seed.
                seed=attempt if attempt else None,
                # (ours) A reflection that announces an answer is rejected whatever follows, so
                # its writer stops there and the retry starts at once.
                abandon_when=reflection.announces_answer)
            gen = (await self.engine.generate([r.writer_ids], params, adapter))[0]
            output = reflection.opening_tag(r.kind) + gen.text
            # (ours) A writer that ends its turn (EOS) inside the open tag has finished its
            # reflection, and an abandoned one is judged on what it wrote; only one cut off by
            # the token budget is unterminated.
            if gen.finish_reason in ("stop", "abandoned") and \
                    not gen.text.endswith(reflection.closing_tag(r.kind)):
                output += reflection.closing_tag(r.kind)
            record.attempts += 1  # one writer generation each: the stats count them
            record.text, reason = await asyncio.to_thread(self._judge, r, output, cfg)
            if reason is None:
                record.accepted, record.reject_reason = True, None
                break
            record.reject_reason = reason.value
            record.reject_reasons.append(reason.value)
            record.rejected_texts.append(record.text or "")
        if self.cache is not None:
            await self.cache.set_many({key: record.model_dump(exclude={"cached"})})
        return record

    def _judge(self, r: RolloutPlan, output: str, cfg: ScoringConfig
               ) -> tuple[str | None, reflection.RejectReason | None]:
        """The text the record keeps, and why it is rejected (None: accepted)."""
        text, reason = reflection.parse_reflection(r.kind, output)
        if reason is None:
            reason = reflection.leak_reason(
                text, reflection_token_ids=self.tokenizer.encode(text, add_special_tokens=False),
                max_reflection_tokens=cfg.max_reflection_tokens, answers=r.leaks.answers,
                sources=r.leaks.sources, ngram=cfg.ngram_overlap, mistakes=r.leaks.mistakes,
                equal=mathcheck.equal)
        # Keep what the writer said even when it is rejected: users need to see why.
        kept = text if text is not None else output[len(reflection.opening_tag(r.kind)):].strip() or None
        return kept, reason

    def _key(self, r: RolloutPlan, cfg: ScoringConfig, policy: Policy) -> str:
        # Everything the final record depends on: the writer's input, how it decodes, and what
        # the filter compares against. A changed template, policy or setting misses the cache.
        # An adapter joins the key only when there is one: keys of plain requests stay as they were.
        adapter = policy.adapter
        on_top = {} if adapter is None else {"adapter": [adapter.label, adapter.path]}
        return reflection_key(
            model_id=self.engine.model_id, policy_version=policy.version, **on_top,
            template_version=cfg.reflection_template, kind=r.kind,
            writer_prompt_ids=r.writer_ids,
            generation={"max_tokens": cfg.max_reflection_tokens,
                        "temperature": cfg.reflection_temperature,
                        "retry_temperature": cfg.retry_temperature, "max_retries": cfg.max_retries},
            leak_filter={"answers": r.leaks.answers, "sources": r.leaks.sources,
                         "mistakes": r.leaks.mistakes, "ngram": cfg.ngram_overlap,
                         "version": reflection.FILTER_VERSION})
