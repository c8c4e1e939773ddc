"""The service's core, shared by every transport: HTTP routes and gRPC methods only translate.

`Runtime` owns the engine, the reflection cache, the idempotency store, admission, the policy
manager, the scorer, the metrics and the lifecycle phase (starting -> ready -> draining, or
engine_dead). Its operations take plain arguments (the request model and a `Call`: deadline,
idempotency key, caller identity, a "caller gone" signal) and return models or raise AmrError,
whose class carries both the HTTP status and the gRPC code.

A score request passes, in order: readiness (503), size caps (413), the idempotency key (replay,
409, 422), admission (429), then the policy gate (503 during a long reload, 409 for another
version) and the scorer, under a deadline (504) that also ends when the caller goes away or the
drain timeout ends (503 draining). Whatever ends a request early cancels its scoring task, and
vLLM aborts the engine requests of a cancelled task.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson

from amr_client.schemas import (PolicyStatus, PolicyUpdate, ScoredGroup, ScoreRequest, ScoreResponse,
                                ScoringConfig)
from amr_sd import mathcheck
from amr_sd.guards.admission import Admission
from amr_sd.guards.auth import check_bearer
from amr_sd.guards.idempotency import make_store, scoped_key
from amr_sd.cache import make_cache
from amr_sd.config import Settings
from amr_sd.engine import create_engine
from amr_sd.errors import (AmrError, DeadlineExceeded, Draining, EngineDead, Overloaded,
                           PayloadTooLarge, ServiceNotReady)
from amr_sd.metrics import Metrics
from amr_sd.policy import PolicyManager
from amr_sd.scorer import Scorer

log = logging.getLogger("amr_sd.runtime")

HEALTH_INTERVAL_S = 1.0
# What a request cut by the end of the drain timeout is answered, from either path (one answer or
# a stream).
DRAIN_ABORTED = ("the service stopped before this request finished (drain timeout); its engine "
                 "work was aborted; retry (another replica)")
# Final answers a retry would get again are stored for replay; the rest free the key.
REPLAYABLE_STATUSES = {400, 401, 403, 404, 413, 422}


class Phase(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    ENGINE_DEAD = "engine_dead"


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


class CallerGone(Exception):
    """The caller stopped waiting before its answer was ready."""


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
        self._engine_factory = engine_factory
        self.engine = self.scorer = self.cache = self.score_cache = self.store = self.policies = None
        self.in_flight = 0  # operations of either transport being served, for the drain
        self._ready = self._draining = self._engine_dead = False
        self._stopping = asyncio.Event()  # set when the drain timeout ends: in-flight work stops
        self._changed = asyncio.Event()  # set on every phase change, for `phases()`
        self._tasks: list[asyncio.Task] = []
        self._creating: asyncio.Future | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def phase(self) -> Phase:
        if self._engine_dead:
            return Phase.ENGINE_DEAD
        if self._draining:
            return Phase.DRAINING
        return Phase.READY if self._ready else Phase.STARTING

    def _set(self, **flags: bool) -> None:
        for name, value in flags.items():
            setattr(self, f"_{name}", value)
        self._changed.set()

    async def phases(self) -> AsyncIterator[Phase]:
        """The phase now, then each change as it happens (gRPC health follows it)."""
        last = None
        while True:
            phase = self.phase
            if phase is not last:
                yield phase
                last = phase
            await self._changed.wait()
            self._changed.clear()

    async def start(self) -> None:
        """Begin loading the engine; returns at once (the phase says when it is ready)."""
        # vLLM's engine takes tens of seconds to load; a thread keeps the loop, and so the
        # ports and the probes, answering meanwhile.
        self._creating = asyncio.ensure_future(asyncio.to_thread(self._make_engine))
        self._tasks.append(asyncio.create_task(self._load(self._creating)))

    def _make_engine(self):
        if self._engine_factory:
            return self._engine_factory(self.settings)
        engine_settings = self.settings.engine_settings()
        for line in engine_settings.explain():
            log.info("%s", line)
        return create_engine(self.settings.engine, self.settings.model, engine_settings)

    async def _load(self, creating: asyncio.Future) -> None:
        settings, metrics = self.settings, self.metrics
        try:
            engine = await asyncio.shield(creating)  # a stop mid-load still gets it, to close it
            self.engine = engine
            await engine.warmup()
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
            metrics.engine_unfinished.set_function(engine.unfinished_requests)
            self._tasks.append(asyncio.create_task(self._watch(engine)))
            self._set(ready=True)
            log.info("ready: model=%s engine=%s cache=%s score_cache=%s", engine.model_id,
                     settings.engine, self.cache.name,
                     self.score_cache.name if self.score_cache is not None else "off")
        except asyncio.CancelledError:
            raise
        except Exception:
            # Same exit as a dead engine: `amr-sd serve` stops with code 3 for a restart.
            log.exception("the engine failed to start")
            self._set(engine_dead=True)

    async def _watch(self, engine) -> None:
        """Turn unready for good when the engine dies; `amr-sd serve` then exits non-zero."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            try:
                await engine.check_health()
            except EngineDead as exc:
                self.note(exc)
                return

    def note(self, exc: BaseException) -> None:
        """Look at an error on its way out: a dead engine makes the service unready at once."""
        if isinstance(exc, EngineDead) and not self._engine_dead:
            log.error("engine died (%s): not ready; the process exits for a restart", exc)
            self._set(engine_dead=True, ready=False)

    def begin_drain(self) -> None:
        """Refuse new work (503 draining); work in flight goes on until stop_in_flight()."""
        self._set(draining=True)

    def stop_in_flight(self) -> None:
        """The drain timeout ended: work still in flight is aborted and answered 503 draining."""
        self._stopping.set()

    async def stopped(self) -> None:
        """Returns once stop_in_flight() has been called: work in flight races it."""
        await self._stopping.wait()

    async def close(self) -> None:
        self._set(ready=False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for closable in (self.store, self.cache, self.score_cache):
            if closable is not None:
                await closable.close()
        if self._creating is not None:
            with contextlib.suppress(Exception):
                await (await self._creating).close()
        await asyncio.to_thread(mathcheck.close)

    @contextlib.contextmanager
    def tracking(self):
        """Count an operation as in flight (the drain waits for it) for the block's duration."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ guards

    def authenticate(self, authorization: str | None) -> None:
        if self.keys:
            check_bearer(authorization, self.keys)

    def accept(self) -> None:
        """Refuse new work while draining, before the request is even read."""
        if self._draining:
            raise Draining("the service is shutting down; retry (another replica)")

    def _scorer(self) -> Scorer:
        if self._engine_dead:
            raise EngineDead("the engine process died; this replica is restarting")
        if self._draining:
            raise Draining("the service is shutting down; retry (another replica)")
        if self.scorer is None or not self._ready:
            raise ServiceNotReady("the engine is still starting")
        return self.scorer

    def _check_caps(self, request: ScoreRequest) -> tuple[int, int]:
        """Refuse a request over a size cap; return its (rollouts, response tokens)."""
        s = self.settings
        rollouts = sum(len(g.rollouts) for g in request.groups)
        tokens = sum(len(r.token_ids) for g in request.groups for r in g.rollouts)
        for what, value, cap in (("groups", len(request.groups), s.max_groups),
                                 ("rollouts", rollouts, s.max_rollouts),
                                 ("response tokens", tokens, s.max_tokens)):
            if value > cap:
                raise PayloadTooLarge(f"{value} {what} in one request; the cap is {cap}",
                                      field="groups")
        return rollouts, tokens

    def _admit(self, size: tuple[int, int]):
        try:
            return self.admission.admit(*size)
        except (Overloaded, PayloadTooLarge) as exc:
            self.metrics.admission_rejected.labels(reason=exc.type).inc()
            raise

    # ------------------------------------------------------------------ idempotency

    async def _claim(self, call: Call) -> "_Claim":
        """Claim the call's idempotency key; `claim.stored` is the answer to replay, if any."""
        claim = _Claim(self.store, None, call.fingerprint)
        if call.idempotency_key is not None:
            claim.key = scoped_key(call.idempotency_key, call.identity)
            claim.stored = await self.store.begin(claim.key, claim.fp)
            if claim.stored is not None:
                self.metrics.idempotent_replays.inc()
                claim.kept = True  # a replay settles nothing
        return claim

    @contextlib.asynccontextmanager
    async def _idempotent(self, call: Call):
        """The claim for the block: its answer is kept with `claim.keep`; an error a retry would
        get again is kept for replay, anything else frees the key."""
        claim = await self._claim(call)
        try:
            yield claim
        except BaseException as exc:
            await claim.settle(exc)
            raise
        await claim.settle(None)

    # ------------------------------------------------------------------ operations

    async def score(self, request: ScoreRequest, call: Call) -> Answer:
        """Score one request (or replay its stored answer). The JSON answer is encoded here
        only when the idempotency store needs it."""
        scorer = self._scorer()
        size = self._check_caps(request)
        async with self._idempotent(call) as claim:
            if claim.stored is not None:
                return Answer(claim.stored.status, claim.stored.body, replayed=True)
            try:
                response = await self._score_admitted(scorer, request, size, call)
            except BaseException as exc:
                self.note(exc)
                raise
            payload = None
            if claim.key is not None:
                # A 512 x 1024 answer takes ~1 s to encode: off the loop.
                payload = await asyncio.to_thread(encode, response)
                await claim.keep(200, payload)
            return Answer(200, payload, response)

    async def _score_admitted(self, scorer: Scorer, request: ScoreRequest, size: tuple[int, int],
                              call: Call) -> ScoreResponse:
        ticket = self._admit(size)

        async def under_one_policy():
            async with self.policies.serving(request.policy) as policy:
                return await scorer.score(request, policy)

        completed = False
        try:
            response = await self._bounded(under_one_policy(), call)
            completed = True
        finally:
            self.admission.release(ticket, completed=completed)
        self.metrics.observe_scoring(response.stats)
        return response

    async def _bounded(self, coro, call: Call):
        """`coro` under the call's deadline, which also ends when the caller goes away or the
        drain timeout ends; cancels it in every case and waits until the cancellation has
        reached the engine, so its work is aborted by the time the error is answered."""
        task = asyncio.ensure_future(coro)
        gone = asyncio.ensure_future(call.gone()) if call.gone else None
        stopping = asyncio.ensure_future(self.stopped())
        waiters = {task, stopping} | ({gone} if gone else set())
        try:
            done, _ = await asyncio.wait(waiters, timeout=call.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping this request
            task.cancel()
            raise
        finally:
            for waiter in (gone, stopping):
                if waiter is not None:
                    waiter.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if gone is not None and gone in done:
            self.metrics.client_disconnects.inc()
            raise CallerGone()
        if stopping in done:
            raise Draining(DRAIN_ABORTED)
        self.metrics.deadline_exceeded.inc()
        raise DeadlineExceeded(f"the deadline of {call.timeout_s:g} s passed; the request's engine "
                               "work was aborted")

    async def open_stream(self, request: ScoreRequest, call: Call) -> Answer | "GroupStream":
        """Admit the request and enter the policy gate (so their errors keep their status), then
        hand back the stream of groups; or the stored answer of a replayed key."""
        scorer = self._scorer()
        size = self._check_caps(request)
        claim = await self._claim(call)
        if claim.stored is not None:
            return Answer(claim.stored.status, claim.stored.body, replayed=True)
        try:
            ticket = self._admit(size)
        except BaseException as exc:
            await claim.settle(exc)
            raise
        groups: asyncio.Queue = asyncio.Queue()
        entered = asyncio.get_running_loop().create_future()

        async def score():
            async with self.policies.serving(request.policy) as policy:
                entered.set_result(None)
                return await scorer.score(request, policy,
                                          on_group=lambda g, group: groups.put((g, group)))

        task = asyncio.ensure_future(score())
        try:
            await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
            if task.done() and not entered.done():
                task.result()  # the gate's error (409 policy_mismatch, 503 reloading)
        except BaseException as exc:
            task.cancel()
            entered.cancel()
            self.admission.release(ticket, completed=False)
            await claim.settle(exc)
            raise
        return GroupStream(self, task, groups, ticket, claim, call.timeout_s)

    async def set_policy(self, update: PolicyUpdate, timeout_s: float) -> PolicyStatus:
        """Load new full weights into the running engine; later requests report the version."""
        self._scorer()  # 503 until the engine is ready
        try:
            status, outcome = await self.policies.reload(update, timeout_s)
        except AmrError as exc:
            self.note(exc)
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
class _Claim:
    store: object
    key: str | None
    fp: str | None
    stored: object = None
    kept: bool = False

    async def keep(self, status: int, body: bytes) -> None:
        if self.key is not None:
            await self.store.finish(self.key, self.fp, status, body)
        self.kept = True

    async def settle(self, exc: BaseException | None) -> None:
        """Keep a final error for replay; free the key for anything a retry could change."""
        if self.key is None or self.kept:
            return
        self.kept = True
        if isinstance(exc, AmrError) and exc.status_code in REPLAYABLE_STATUSES:
            await self.store.finish(self.key, self.fp, exc.status_code, orjson.dumps(exc.to_dict()))
        else:
            await self.store.release(self.key)


class GroupStream:
    """The groups of one admitted request as they complete: `(index, ScoredGroup)` items, then
    the whole `ScoreResponse` as the last item. The deadline bounds the wait for each next item,
    so a long batch never has to fit one deadline as a whole. Iterate `items()` once, under
    `contextlib.aclosing`: leaving early aborts the engine work."""

    def __init__(self, runtime: Runtime, task: asyncio.Task, groups: asyncio.Queue, ticket,
                 claim: _Claim, idle_timeout_s: float):
        self._runtime, self._task, self._groups = runtime, task, groups
        self._ticket, self._claim, self._idle_timeout_s = ticket, claim, idle_timeout_s

    async def items(self) -> AsyncIterator[tuple[int, ScoredGroup] | ScoreResponse]:
        rt = self._runtime
        completed, failure = False, None
        stopping = asyncio.ensure_future(rt.stopped())
        # The transport stopped counting when the stream began; the drain waits for this.
        with rt.tracking():
            try:
                while True:
                    getter = asyncio.ensure_future(self._groups.get())
                    done, _ = await asyncio.wait({getter, self._task, stopping},
                                                 timeout=self._idle_timeout_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        yield getter.result()
                        continue
                    getter.cancel()
                    if stopping in done:
                        raise Draining(DRAIN_ABORTED)
                    if self._task not in done:
                        rt.metrics.deadline_exceeded.inc()
                        raise DeadlineExceeded(
                            f"no group finished within {self._idle_timeout_s:g} s; the request's "
                            "engine work was aborted")
                    while not self._groups.empty():
                        yield self._groups.get_nowait()
                    response = self._task.result()
                    completed = True
                    rt.metrics.observe_scoring(response.stats)
                    if self._claim.key is not None:
                        await self._claim.keep(200, await asyncio.to_thread(encode, response))
                    yield response
                    return
            except BaseException as exc:
                failure = exc
                rt.note(exc)
                raise
            finally:
                stopping.cancel()
                if not self._task.done():
                    self._task.cancel()  # deadline, error or caller gone: vLLM aborts engine work
                    with contextlib.suppress(BaseException):
                        await self._task
                rt.admission.release(self._ticket, completed=completed)
                if not completed:
                    await self._claim.settle(failure)
