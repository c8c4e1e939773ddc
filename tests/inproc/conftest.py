"""In-process envelope tests: the real runtime, the real FastAPI app and the real gRPC server on
loopback, over a stand-in engine, so error and validation paths run in seconds, not minutes.

`service(**settings)` (an async context manager; `model_path=` names the served checkpoint) gives a `Service` with an HTTP client (httpx over
ASGI, the app's lifespan run by hand) and a gRPC stub on a free port, both over one runtime.
Tests run their own event loop with asyncio.run.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from amr_client.v1 import scoring_pb2_grpc as pb_grpc  # noqa: E402
from amr_sd.api.grpc_server import GrpcServer  # noqa: E402
from amr_sd.api.http import create_app  # noqa: E402
from amr_sd.config import Settings  # noqa: E402
from amr_sd.engine.standin import StandInEngine  # noqa: E402
from amr_sd.runtime import Phase, Runtime  # noqa: E402
from bench.common.procs import free_port


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from amr_sd.engine.models import materialize_embedded

    return AutoTokenizer.from_pretrained(str(materialize_embedded()))


@dataclass
class Service:
    runtime: Runtime
    engine: StandInEngine
    http: httpx.AsyncClient
    channel: grpc.aio.Channel
    stub: pb_grpc.ScoringStub

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while self.runtime.phase is not Phase.READY:
                await asyncio.sleep(0.01)


@pytest.fixture
def service(tokenizer):
    @contextlib.asynccontextmanager
    async def start(*, ready: bool = True, model_path: str | None = None, **settings):
        engine = StandInEngine(tokenizer) if model_path is None else StandInEngine(tokenizer, model_path=model_path)
        if not ready:
            engine.warm.clear()
        runtime = Runtime(Settings(**settings), engine_factory=lambda s: engine)
        app = create_app(runtime)
        grpc_server = GrpcServer(runtime, "127.0.0.1", free_port())
        await runtime.start()
        await grpc_server.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://amr-sd")
        channel = grpc.aio.insecure_channel(grpc_server.address)
        svc = Service(runtime, engine, http, channel, pb_grpc.ScoringStub(channel))
        try:
            if ready:
                await svc.wait_ready()
            yield svc
        finally:
            await http.aclose()
            await channel.close()
            await grpc_server.stop(grace_s=0)
            await runtime.close()

    return start
