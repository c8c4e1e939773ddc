"""`amr-sd serve`: HTTP (uvicorn) and, with a gRPC port, gRPC on one event loop around one runtime.

The first SIGTERM (or Ctrl-C) starts the drain: /readyz and gRPC health turn NOT_SERVING at
once, so a load balancer stops sending; new requests on either transport get 503 draining /
UNAVAILABLE; requests in flight finish, for up to `drain_timeout_s`. Whatever still runs then is
aborted and answered 503 draining / UNAVAILABLE (retryable) instead of being cut off. Then both
servers stop and the runtime closes the engine. A second signal stops at once. A dead engine
stops the server too; `serve` then exits non-zero so an orchestrator restarts the process.
"""

from __future__ import annotations

import time

import uvicorn

from amr_sd.runtime import Phase, Runtime

# After the drain timeout, how long aborted requests get to send their 503 before the stop.
ABORT_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime, drain_timeout_s: float,
                 grpc_port: int | None = None):
        super().__init__(config)
        self.runtime = runtime
        self._drain_timeout_s = drain_timeout_s
        self._drain_deadline: float | None = None
        self._grpc_port = grpc_port
        self._grpc = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)  # the lifespan starts the runtime
        if self._grpc_port is not None and not self.should_exit:
            from amr_sd.api.grpc_server import GrpcServer

            self._grpc = GrpcServer(self.runtime, self.config.host, self._grpc_port)
            await self._grpc.start()

    async def shutdown(self, sockets=None) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace_s=ABORT_GRACE_S)
        await super().shutdown(sockets)  # the lifespan closes the runtime

    def handle_exit(self, sig, frame) -> None:
        # Not calling uvicorn's own: it records the signal and re-raises it at exit, and a
        # process that dies by SIGTERM reads as a crash to an orchestrator.
        if self._drain_deadline is not None:
            self.should_exit = self.force_exit = True
            return
        self.runtime.begin_drain()
        self._drain_deadline = time.monotonic() + self._drain_timeout_s

    async def on_tick(self, counter: int) -> bool:
        runtime = self.runtime
        if runtime.phase is Phase.ENGINE_DEAD:
            self.should_exit = True
        elif self._drain_deadline is not None:
            late = time.monotonic() - self._drain_deadline
            if runtime.in_flight == 0 or late > ABORT_GRACE_S:
                self.should_exit = True
            elif late > 0:
                runtime.stop_in_flight()
        return await super().on_tick(counter)
