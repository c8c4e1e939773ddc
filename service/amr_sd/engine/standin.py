"""A stand-in engine: the whole `base.Engine` surface with made-up but deterministic numbers.

For tests and benchmarks of everything around the engine (the scorer's logic, the policy gate,
the runtime, the transports), never of scoring itself: the real-engine suites do that. It takes
a real tokenizer, since the scorer renders prompts and decodes text with it. A test that needs
other behaviour subclasses it and overrides the call in question (`generate`, `score`, ...).
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np

from amr_sd.engine.base import Adapter, EngineSettings, Generation, GenerationParams
from amr_sd.errors import InvalidRequest

# What `generate` writes for every prompt, ended by the first stop string.
REFLECTION = "Check each step of the sum again."


class StandInEngine:
    supports_seed = False

    def __init__(self, tokenizer=None, *, model_id: str = "stand-in",
                 model_path: str = "/nonexistent/stand-in", vocab_size: int | None = None,
                 max_model_len: int = 2048, max_lora_rank: int = 0,
                 lora_target_modules: tuple[str, ...] = (), settings: EngineSettings | None = None):
        """`tokenizer` may be left out where nothing reads it (the policy manager does not);
        `vocab_size` defaults to the tokenizer's length."""
        if vocab_size is None:
            vocab_size = len(tokenizer) if tokenizer is not None else 0
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.model_path = model_path
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.max_lora_rank = max_lora_rank
        self.lora_target_modules = lora_target_modules
        self.settings = settings or EngineSettings()
        self.delay_s = 0.0  # each generate/score call takes this long: deadlines and drains
        self.generate_calls = self.score_calls = 0
        self.passes = 0  # sequences scored, over all score calls
        self.loads: list[str] = []  # load_weights paths, in order
        self.adapters: list[Adapter] = []  # load_adapter calls, in order
        self.unfinished = 0
        self.warm = asyncio.Event()
        self.warm.set()  # clear it to hold a service in "starting"

    @property
    def score_identity(self) -> dict[str, str]:
        return {"engine": type(self).__name__, "dtype": str(self.settings.dtype)}

    async def _work(self) -> None:
        self.unfinished += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.unfinished -= 1  # a cancelled call is an aborted one, as in vLLM

    async def generate(self, prompts: Sequence[Sequence[int]], params: GenerationParams,
                       adapter: Adapter | None = None) -> list[Generation]:
        self.generate_calls += 1
        await self._work()
        # Ends at the stop string, kept in the text, as vLLM's generations do.
        text = REFLECTION + (params.stop[0] if params.stop else "")
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        return [Generation(text, ids, "stop") for _ in prompts]

    async def score(self, sequences: Sequence[Sequence[int]], start_indices: Sequence[int],
                    adapter: Adapter | None = None) -> list[np.ndarray]:
        self.score_calls += 1
        self.passes += len(sequences)
        await self._work()
        # A logprob that depends on the token and its context length: teacher and student
        # sequences (different contexts) differ, so CIG is not all zero.
        return [np.array([-((t * 7 + len(seq)) % 13) / 4.0 for t in seq[start:]], dtype=np.float64)
                for seq, start in zip(sequences, start_indices)]

    async def load_adapter(self, adapter: Adapter) -> None:
        if not self.max_lora_rank:
            raise InvalidRequest("the stand-in engine was made without LoRA (max_lora_rank=0)")
        self.adapters.append(adapter)

    async def loaded_adapters(self) -> list[str]:
        return list(dict.fromkeys(a.label for a in self.adapters))

    async def load_weights(self, path: str) -> None:
        self.loads.append(path)

    async def warmup(self) -> None:
        await self.warm.wait()

    async def check_health(self) -> None:
        return None

    def unfinished_requests(self) -> int:
        return self.unfinished

    async def close(self) -> None:
        return None
