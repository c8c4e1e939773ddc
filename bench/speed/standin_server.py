"""`amr-sd serve` over a stand-in engine of fixed speed, for the fan-out figure of the replicas part.

    python -m bench.speed.standin_server --port P --cost-s-per-token 0.0004

The server is the real one (`create_app`, `DrainingServer`, the `Runtime` with its admission,
idempotency and scorer); only the engine is `FixedRateEngine`: a scoring call takes
`cost_s_per_token` per scored token and calls wait their turn, as on an engine busy at a fixed
rate. The wait is a sleep, so the engine uses no CPU: the process's own CPU is the service's
request handling alone. Reflection writing is never asked for (the bench's groups bring
`reflection_override`). The tokenizer is the embedded model's.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import numpy as np
from amr_sd.engine.base import Adapter
from amr_sd.engine.standin import StandInEngine


def scored_tokens(sequences: Sequence[Sequence[int]], start_indices: Sequence[int]) -> int:
    """The rows one scoring call computes logprobs for: each sequence from its start index."""
    return sum(len(seq) - start for seq, start in zip(sequences, start_indices))


class FixedRateEngine(StandInEngine):
    """The stand-in's numbers, at `cost_s_per_token` seconds per scored token, one call at a time."""

    def __init__(self, tokenizer, cost_s_per_token: float):
        super().__init__(tokenizer)
        self.cost_s_per_token = cost_s_per_token
        self.tokens_scored = 0
        # Calls that arrive together queue rather than overlap: a real engine's speed is
        # shared by what it runs at once, so N calls take N times as long, not as long as one.
        self._busy = asyncio.Lock()

    async def score(self, sequences: Sequence[Sequence[int]], start_indices: Sequence[int],
                    adapter: Adapter | None = None) -> list[np.ndarray]:
        tokens = scored_tokens(sequences, start_indices)
        async with self._busy:
            await asyncio.sleep(self.cost_s_per_token * tokens)
        self.tokens_scored += tokens
        return await super().score(sequences, start_indices, adapter)


def main() -> None:
    import uvicorn
    from amr_sd.api.http import create_app
    from amr_sd.api.server import DrainingServer
    from amr_sd.config import Settings
    from amr_sd.engine.models import materialize_embedded
    from amr_sd.runtime import Runtime
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cost-s-per-token", type=float, required=True,
                        help="engine seconds per scored token (both passes count)")
    args = parser.parse_args()

    engine = FixedRateEngine(AutoTokenizer.from_pretrained(str(materialize_embedded())),
                             args.cost_s_per_token)
    # Score cache off: the bench sends the same groups round after round.
    settings = Settings(host="127.0.0.1", port=args.port, score_cache_ttl_s=0)
    runtime = Runtime(settings, engine_factory=lambda s: engine)
    config = uvicorn.Config(create_app(runtime), host=settings.host, port=settings.port, workers=1,
                            log_level="warning", timeout_graceful_shutdown=5)
    DrainingServer(config, runtime, settings.drain_timeout_s).run()


if __name__ == "__main__":
    main()
