"""The service's core, shared by every transport: HTTP routes and gRPC methods only translate.

`Runtime` owns the engine's lifecycle (lifecycle.py: starting -> ready -> draining, or
engine_dead), the guards (amr_sd.guards: admission, idempotency, API keys), the reflection and
score caches, the policy manager, the scorer and the metrics. Its operations take plain arguments
(the request model and a `Call`: deadline, idempotency key, caller identity, a "caller gone"
signal) and return models or raise AmrError, whose class carries both the HTTP status and the
gRPC code.

A score request passes, in order: readiness (503), size caps (413), the idempotency key (replay,
409, 422), admission (429), then the policy gate (503 during a long reload, 409 for another
version) and the scorer, under a deadline (504) that also ends when the caller goes away or the
drain timeout ends (503 draining). Whatever ends a request early cancels its scoring task, and
vLLM aborts the engine requests of a cancelled task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson

from amr_client.schemas import (PolicyStatus, PolicyUpdate, ScoredGroup, ScoreRequest, ScoreResponse,
                                ScoringConfig)
from amr_sd.cache import make_cache
from amr_sd.config import Settings
from amr_sd.engine import create_engine
from amr_sd.errors import AmrError, Overloaded, PayloadTooLarge
from amr_sd.guards.admission import Admission, Ticket, request_size
from amr_sd.guards.auth import check_bearer
from amr_sd.guards.idempotency import Claim, make_store
from amr_sd.lifecycle import CallerGone, Lifecycle, Phase
from amr_sd.metrics import Metrics
from amr_sd.policy import PolicyManager
from amr_sd.scoring import Scorer

__all__ = ["Answer", "Call", "CallerGone", "GroupStream", "Phase", "Runtime", "encode"]

log = logging.getLogger("amr_sd.runtime")


@dataclass(frozen=True)
class Call:
    """What a transport knows of one request besides its body."""
    timeout_s: float
    idempotency_key: str | None = None
    fingerprint: str | None = None  # of the request as received; a reused key must match it
    identity: str | None = None  # the caller's credential: idempotency keys are scoped by it
    gone: Callable[[], Awaitable[None]] | None = None  # returns when the caller stops waiting


@dataclass(frozen=True)
class Answer:
    """A score answer: scored now (`response`), or replayed from the idempotency store."""
    status: int = 200
    json: bytes | None = None  # the JSON answer; always set for a replay
    response: ScoreResponse | None = None
    replayed: bool = False

    def model(self) -> ScoreResponse:
        return self.response if self.response is not None else ScoreResponse.model_validate_json(self.json)


def encode(response: ScoreResponse) -> bytes:
    # orjson: large advantage arrays serialise several times faster than the stdlib encoder.
    return orjson.dumps(response.model_dump(mode="json"))


class Runtime:
    def __init__(self, settings: Settings | None = None, engine_factory: Callable | None = None):
        self.settings = settings = settings or Settings()
        self.metrics = Metrics()
        self.keys = settings.keys()
        self.admission = Admission(settings.max_pending_sequences, settings.max_pending_tokens)
        self.metrics.pending_sequences.set_function(lambda: self.admission.pending_sequences)
        self.metrics.pending_tokens.set_function(lambda: self.admission.pending_tokens)
        self.lifecycle = Lifecycle(self.metrics)
        self._engine_factory = engine_factory
        self.engine = self.scorer = self.cache = self.score_cache = self.store = self.policies = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin loading the engine; returns at once (the phase says when it is ready)."""
        self.lifecycle.start(self._make_engine, self._assemble)

    def _make_engine(self):
        if self._engine_factory:
            return self._engine_factory(self.settings)
        engine_settings = self.settings.engine_settings()
        for line in engine_settings.explain():
            log.info("%s", line)
        return create_engine(self.settings.engine, self.settings.model, engine_settings)

    def _assemble(self, engine) -> None:
        """Build what the operations use around the warm engine."""
        settings, metrics = self.settings, self.metrics
        self.engine = engine
        self.cache = make_cache(settings.redis_url, ttl_s=settings.cache_ttl_s,
                                max_entries=settings.cache_max_entries,
                                on_error=metrics.cache_errors.inc)
        if settings.score_cache_ttl_s > 0:
            self.score_cache = make_cache(settings.redis_url, ttl_s=settings.score_cache_ttl_s,
                                          max_entries=settings.score_cache_max_entries,
                                          on_error=metrics.cache_errors.inc)
        self.store = make_store(settings.redis_url, ttl_s=settings.idempotency_ttl_s,
                                pending_ttl_s=settings.max_request_timeout_s + 60,
                                on_error=metrics.cache_errors.inc)
        self.policies = PolicyManager(
            engine, root=settings.policy_root, version=settings.policy_version,
            lora_modules=settings.lora_module_paths(), wait_s=settings.policy_wait_s)
        self.policies.check_modules()
        self.scorer = Scorer(engine, cache=self.cache, score_cache=self.score_cache)
        log.info("ready: model=%s engine=%s cache=%s score_cache=%s", engine.model_id,
                 settings.engine, self.cache.name,
                 self.score_cache.name if self.score_cache is not None else "off")

    async def close(self) -> None:
        await self.lifecycle.close(self.store, self.cache, self.score_cache)

    # The lifecycle as the transports and `amr-sd serve` see it.

    @property
    def phase(self) -> Phase:
        return self.lifecycle.phase

    @property
    def in_flight(self) -> int:
        return self.lifecycle.in_flight

    def phases(self) -> AsyncIterator[Phase]:
        return self.lifecycle.phases()

    def tracking(self) -> contextlib.AbstractContextManager:
        return self.lifecycle.tracking()

    def begin_drain(self) -> None:
        self.lifecycle.begin_drain()

    def stop_in_flight(self) -> None:
        self.lifecycle.stop_in_flight()

    # ------------------------------------------------------------------ guards

    def authenticate(self, authorization: str | None) -> None:
        if self.keys:
            check_bearer(authorization, self.keys)

    def accept(self) -> None:
        """Refuse new work while draining, before the request is even read."""
        self.lifecycle.accept()

    def _scorer(self) -> Scorer:
        self.lifecycle.check_ready()
        return self.scorer

    async def _admit(self, request: ScoreRequest, call: Call) -> Answer | _Admitted:
        """Size caps (413), then the idempotency key (its stored answer, to replay; 409, 422),
        then admission (429)."""
        s = self.settings
        size = request_size(request, s.max_groups, s.max_rollouts, s.max_tokens)
        claim = await Claim.begin(self.store, call.idempotency_key, call.identity, call.fingerprint)
        if claim.stored is not None:
            self.metrics.idempotent_replays.inc()
            return Answer(claim.stored.status, claim.stored.body, replayed=True)
        try:
            ticket = self.admission.admit(*size)
        except (Overloaded, PayloadTooLarge) as exc:
            self.metrics.admission_rejected.labels(reason=exc.type).inc()
            await claim.settle(exc)
            raise
        return _Admitted(ticket, claim, self.admission, self.lifecycle, self.metrics)

    async def _gated(self, request: ScoreRequest, score: Callable,
                     entered: asyncio.Future | None = None):
        """`score(policy)` under the policy the request names, held steady until it returns: the
        gate is 503 during a long reload, 409 for another version. `entered`: set once past it."""
        async with self.policies.serving(request.policy) as policy:
            if entered is not None:
                entered.set_result(None)
            return await score(policy)

    # ------------------------------------------------------------------ operations

    async def score(self, request: ScoreRequest, call: Call) -> Answer:
        """Score one request (or replay its stored answer). The JSON answer is encoded here
        only when the idempotency store needs it."""
        scorer = self._scorer()
        admitted = await self._admit(request, call)
        if isinstance(admitted, Answer):
            return admitted
        try:
            response = await self.lifecycle.bounded(
                self._gated(request, lambda policy: scorer.score(request, policy)),
                call.timeout_s, f"the deadline of {call.timeout_s:g} s passed", gone=call.gone)
        except BaseException as exc:
            await admitted.fail(exc)
            raise
        return Answer(200, await admitted.finish(response), response)

    async def open_stream(self, request: ScoreRequest, call: Call) -> Answer | GroupStream:
        """Admit the request and enter the policy gate (so their errors keep their status), then
        hand back the stream of groups; or the stored answer of a replayed key."""
        scorer = self._scorer()
        admitted = await self._admit(request, call)
        if isinstance(admitted, Answer):
            return admitted
        groups: asyncio.Queue = asyncio.Queue()
        entered = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._gated(
            request, lambda policy: scorer.score(request, policy,
                                                 on_group=lambda g, group: groups.put((g, group))),
            entered))
        try:
            await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
            if task.done() and not entered.done():
                task.result()  # the gate's error (409 policy_mismatch, 503 reloading)
        except BaseException as exc:
            task.cancel()
            entered.cancel()
            await admitted.fail(exc)
            raise
        return GroupStream(self.lifecycle, admitted, task, groups, call.timeout_s)

    async def set_policy(self, update: PolicyUpdate, timeout_s: float) -> PolicyStatus:
        """Load new full weights into the running engine; later requests report the version."""
        self._scorer()  # 503 until the engine is ready
        try:
            status, outcome = await self.policies.reload(update, timeout_s)
        except AmrError as exc:
            self.lifecycle.note(exc)
            self.metrics.policy_reloads.labels(
                outcome="failed" if exc.status_code >= 500 else "rejected").inc()
            raise
        self.metrics.policy_reloads.labels(outcome=outcome).inc()
        if outcome == "loaded":
            self.metrics.policy_reload_seconds.observe(status.reload_s)
        return status

    async def get_policy(self) -> PolicyStatus:
        self._scorer()
        return await self.policies.status()

    def info(self) -> dict:
        engine = self._scorer().engine
        return {
            "model": engine.model_id, "model_path": engine.model_path,
            "policy_version": self.policies.version, "lora_enabled": bool(engine.max_lora_rank),
            "engine": self.settings.engine,
            "max_model_len": engine.max_model_len, "vocab_size": engine.vocab_size,
            "engine_settings": engine.settings.describe(),
            "template_version": ScoringConfig().reflection_template, "cache": self.cache.name,
            "score_cache": self.score_cache.name if self.score_cache is not None else "off",
            "limits": self.settings.limits(), "defaults": ScoringConfig().model_dump(),
        }

    def timeout_s(self, requested: float | None) -> float:
        """The deadline of a request that asked for `requested` seconds (None: the default)."""
        if requested is None:
            return self.settings.request_timeout_s
        return min(requested, self.settings.max_request_timeout_s)


@dataclass
class _Admitted:
    """A request past the guards: it holds room in admission and its idempotency claim until
    `finish` or `fail` gives both back."""
    ticket: Ticket
    claim: Claim
    admission: Admission
    lifecycle: Lifecycle
    metrics: Metrics

    async def finish(self, response: ScoreResponse) -> bytes | None:
        """Count the request done and keep its answer for a retry; returns the JSON answer if the
        idempotency store needed it."""
        self.admission.release(self.ticket, completed=True)
        self.metrics.observe_scoring(response.stats)
        if self.claim.key is None:
            return None
        try:
            # A 512 x 1024 answer takes ~1 s to encode: off the loop.
            payload = await asyncio.to_thread(encode, response)
            await self.claim.keep(200, payload)
        except BaseException as exc:
            await self.claim.settle(exc)
            raise
        return payload

    async def fail(self, exc: BaseException) -> None:
        self.lifecycle.note(exc)
        self.admission.release(self.ticket, completed=False)
        await self.claim.settle(exc)


class GroupStream:
    """The groups of one admitted request as they complete: `(index, ScoredGroup)` items, then
    the whole `ScoreResponse` as the last item. The deadline bounds the wait for each next item,
    so a long batch never has to fit one deadline as a whole. Iterate `items()` once, under
    `contextlib.aclosing`: leaving early aborts the engine work."""

    def __init__(self, lifecycle: Lifecycle, admitted: _Admitted, task: asyncio.Task,
                 groups: asyncio.Queue, idle_timeout_s: float):
        self._lifecycle, self._admitted, self._task = lifecycle, admitted, task
        self._groups, self._idle_timeout_s = groups, idle_timeout_s
        # The end of the task queues a None after its last group: one wait covers both.
        task.add_done_callback(lambda _: groups.put_nowait(None))

    async def items(self) -> AsyncIterator[tuple[int, ScoredGroup] | ScoreResponse]:
        # The transport stopped counting when the stream began; the drain waits for this.
        with self._lifecycle.tracking():
            try:
                while (item := await self._next()) is not None:
                    yield item
                response = self._task.result()
            except BaseException as exc:
                if not self._task.done():
                    self._task.cancel()  # deadline, error or caller gone: vLLM aborts engine work
                    with contextlib.suppress(BaseException):
                        await self._task
                await self._admitted.fail(exc)
                raise
            await self._admitted.finish(response)
            yield response

    def _next(self) -> Awaitable:
        """The next group, or None once the task has ended, within the idle deadline."""
        return self._lifecycle.bounded(self._groups.get(), self._idle_timeout_s,
                                       f"no group finished within {self._idle_timeout_s:g} s")
