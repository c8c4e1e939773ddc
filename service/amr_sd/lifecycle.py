"""The service's life: starting -> ready -> draining, or engine_dead; and the work in flight.

`Lifecycle` creates the engine off the loop, warms it up, has the rest of the service built
around it, then watches it: a dead engine makes the service unready for good, and `amr-sd serve`
exits non-zero for a restart. A drain refuses new work at once and lets the work in flight run,
until the drain timeout ends it (`stop_in_flight`). `bounded` is the one wait every request's
work goes through: it ends at the request's deadline, when the caller goes away or when the drain
timeout ends, and cancels the work in each case (vLLM aborts the engine requests of a cancelled
task).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from amr_sd import mathcheck
from amr_sd.engine.base import LifecycleEngine
from amr_sd.errors import DeadlineExceeded, Draining, EngineDead, ServiceNotReady
from amr_sd.metrics import Metrics

log = logging.getLogger("amr_sd.runtime")  # one log for the service core, with runtime.py

HEALTH_INTERVAL_S = 1.0
# What a request cut by the end of the drain timeout is answered, from either path (one answer or
# a stream).
DRAIN_ABORTED = ("the service stopped before this request finished (drain timeout); its engine "
                 "work was aborted; retry (another replica)")


class Phase(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    ENGINE_DEAD = "engine_dead"


class CallerGone(Exception):
    """The caller stopped waiting before its answer was ready."""


class Lifecycle:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.in_flight = 0  # operations of either transport being served, for the drain
        self._ready = self._draining = self._engine_dead = False
        self._stopping = asyncio.Event()  # set when the drain timeout ends: in-flight work stops
        self._changed = asyncio.Event()  # set on every phase change, for `phases()`
        self._tasks: list[asyncio.Task] = []
        self._creating: asyncio.Future | None = None

    # ------------------------------------------------------------------ phase

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

    def accept(self) -> None:
        """Refuse new work while draining."""
        if self._draining:
            raise Draining("the service is shutting down; retry (another replica)")

    def check_ready(self) -> None:
        """Raise unless the service takes work: 503 while starting or draining, or for good once
        the engine is dead."""
        if self._engine_dead:
            raise EngineDead("the engine process died; this replica is restarting")
        self.accept()
        if not self._ready:
            raise ServiceNotReady("the engine is still starting")

    # ------------------------------------------------------------------ start, watch, close

    def start(self, create: Callable[[], LifecycleEngine],
              assemble: Callable[[LifecycleEngine], None]) -> None:
        """Create the engine with `create` in a thread, warm it up, then `assemble(engine)` the
        service around it and turn ready; returns at once (the phase says when it is ready)."""
        # vLLM's engine takes tens of seconds to load; a thread keeps the loop, and so the
        # ports and the probes, answering meanwhile.
        self._creating = asyncio.ensure_future(asyncio.to_thread(create))
        self._tasks.append(asyncio.create_task(self._load(self._creating, assemble)))

    async def _load(self, creating: asyncio.Future,
                    assemble: Callable[[LifecycleEngine], None]) -> None:
        try:
            engine = await asyncio.shield(creating)  # a stop mid-load still gets it, to close it
            await engine.warmup()
            assemble(engine)
            self.metrics.engine_unfinished.set_function(engine.unfinished_requests)
            self._tasks.append(asyncio.create_task(self._watch(engine)))
            self._set(ready=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Same exit as a dead engine: `amr-sd serve` stops with code 3 for a restart.
            log.exception("the engine failed to start")
            self._set(engine_dead=True)

    async def _watch(self, engine: LifecycleEngine) -> None:
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

    async def close(self, *parts) -> None:
        """Stop the background tasks, close `parts` (those not None), then the engine."""
        self._set(ready=False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for part in parts:
            if part is not None:
                await part.close()
        if self._creating is not None:
            with contextlib.suppress(Exception):
                await (await self._creating).close()
        await asyncio.to_thread(mathcheck.close)

    # ------------------------------------------------------------------ drain and deadlines

    def begin_drain(self) -> None:
        """Refuse new work (503 draining); work in flight goes on until stop_in_flight()."""
        self._set(draining=True)

    def stop_in_flight(self) -> None:
        """The drain timeout ended: work still in flight is aborted and answered 503 draining."""
        self._stopping.set()

    @contextlib.contextmanager
    def tracking(self):
        """Count an operation as in flight (the drain waits for it) for the block's duration."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def bounded(self, work: Awaitable, timeout_s: float, late: str,
                      gone: Callable[[], Awaitable[None]] | None = None):
        """`work`'s result, if it comes within `timeout_s`, before the caller is `gone` and
        before the drain timeout ends. Otherwise `work` is cancelled, and the cancellation has
        reached the engine by the time this raises: CallerGone, 503 draining, or 504 saying
        `late`."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(gone()) if gone else None
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiters = {task, stopping} | ({gone} if gone else set())
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout_s,
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
        raise DeadlineExceeded(f"{late}; the request's engine work was aborted")
