"""`amr-sd serve` with every engine call recorded, and the event loop's lag sampled.

    python -m bench.speed.recorder --port P --record calls.json

The server is the real one (`create_app`, `DrainingServer`, the default engine for this machine);
only the engine is wrapped, and the wrapper adds nothing but two clock reads and a list append per
call. On SIGTERM it drains as usual and then writes the recording: each call's kind, token ids,
parameters and wall-clock start and end, plus one lag sample per 10 ms tick (how late a 10 ms
sleep woke up), so `bench.speed.overhead` can replay the calls on a bare AsyncLLM and read the
lag of each workload's window.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path

LAG_TICK_S = 0.010


class RecordingEngine:
    """The real engine; each generate/score call is noted with its arguments and timing."""

    def __init__(self, engine):
        self._engine = engine
        self.calls: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompts, params, adapter=None):
        start = time.time()
        out = await self._engine.generate(prompts, params, adapter)
        self.calls.append({"kind": "generate", "start": start, "end": time.time(),
                           "prompts": [list(p) for p in prompts],
                           "params": {**dataclasses.asdict(params),
                                      "abandon_when": params.abandon_when is not None},
                           "generated": [len(g.token_ids) for g in out]})
        return out

    async def score(self, sequences, start_indices, adapter=None):
        start = time.time()
        out = await self._engine.score(sequences, start_indices, adapter)
        self.calls.append({"kind": "score", "start": start, "end": time.time(),
                           "sequences": [list(s) for s in sequences],
                           "starts": list(start_indices)})
        return out


async def _sample_lag(samples: list) -> None:
    while True:
        before = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        samples.append((time.time(), time.perf_counter() - before - LAG_TICK_S))


def main() -> None:
    import uvicorn

    from amr_sd.api.http import create_app
    from amr_sd.api.server import DrainingServer
    from amr_sd.config import Settings
    from amr_sd.engine import create_engine
    from amr_sd.runtime import Runtime
    from bench.common import corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args()

    # The measured model (python -m bench --model), as the replay's bare engine loads it.
    settings = Settings(port=args.port, model=corpus.model())
    holder: dict = {}

    def factory(s):
        holder["engine"] = RecordingEngine(create_engine(s.engine, s.model, s.engine_settings()))
        return holder["engine"]

    runtime = Runtime(settings, engine_factory=factory)
    config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=args.port, workers=1,
                            log_level="warning", timeout_graceful_shutdown=5)
    server = DrainingServer(config, runtime, settings.drain_timeout_s)
    lag: list = []

    async def serve():
        sampler = asyncio.ensure_future(_sample_lag(lag))
        try:
            await server.serve()
        finally:
            sampler.cancel()

    asyncio.run(serve())
    engine = holder.get("engine")
    settings_used = engine.settings.describe() if engine is not None else {}
    args.record.write_text(json.dumps({"calls": engine.calls if engine else [], "lag": lag,
                                       "engine_settings": settings_used}))


if __name__ == "__main__":
    main()
