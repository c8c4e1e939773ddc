"""`amr-sd serve`'s uvicorn server: drain on SIGTERM, stop when the engine dies.

The first SIGTERM (or Ctrl-C) marks the app draining: /readyz answers 503 at once, so a load
balancer stops sending; new /v1 requests get 503 + Retry-After; requests in flight finish, for
up to `drain_timeout_s`. Then uvicorn shuts down as usual (lifespan: engine closed). A second
signal stops at once. A dead engine stops the server too; `serve` then exits non-zero so an
orchestrator restarts the process.
"""

from __future__ import annotations

import time

import uvicorn


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app, drain_timeout_s: float):
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._drain_deadline: float | None = None

    def handle_exit(self, sig, frame) -> None:
        # Not calling uvicorn's own: it records the signal and re-raises it at exit, and a
        # process that dies by SIGTERM reads as a crash to an orchestrator.
        if self._drain_deadline is not None:
            self.should_exit = self.force_exit = True
            return
        self._app.state.draining = True
        self._drain_deadline = time.monotonic() + self._drain_timeout_s

    async def on_tick(self, counter: int) -> bool:
        state = self._app.state
        if state.engine_dead:
            self.should_exit = True
        elif self._drain_deadline is not None and (
                state.in_flight == 0 or time.monotonic() > self._drain_deadline):
            self.should_exit = True
        return await super().on_tick(counter)
