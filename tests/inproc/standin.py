"""A small stand-in engine for envelope tests: the real tokenizer of the embedded model, made-up
but deterministic numbers, and switches to make it slow. Never used where a test claims to test
scoring itself; the real-engine suites (integration/, e2e/) do that."""

from __future__ import annotations

import asyncio

import numpy as np

from amr_sd.engine.base import EngineSettings, Generation


class StandInEngine:
    model_id = "stand-in"
    model_path = "/nonexistent/stand-in"
    max_lora_rank = 0
    lora_target_modules = ()
    max_model_len = 2048
    supports_seed = False
    settings = EngineSettings()
    score_identity = {"engine": "StandInEngine", "dtype": "bfloat16"}

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.generate_calls = self.score_calls = 0
        self.delay_s = 0.0  # each engine call takes this long: deadlines and drains
        self.unfinished = 0
        self.warm = asyncio.Event()
        self.warm.set()  # clear it to hold the service in "starting"

    async def _work(self):
        self.unfinished += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.unfinished -= 1  # a cancelled call is an aborted one, as in vLLM

    async def generate(self, prompts, params, adapter=None):
        self.generate_calls += 1
        await self._work()
        # Ends at the stop string, kept in the text, as vLLM's generations do.
        text = "Check each step of the sum again." + params.stop[0]
        return [Generation(text, tuple(self.tokenizer.encode(text, add_special_tokens=False)), "stop")
                for _ in prompts]

    async def score(self, sequences, start_indices, adapter=None):
        self.score_calls += 1
        await self._work()
        # A logprob that depends on the token and its context length: teacher and student
        # sequences (different contexts) differ, so CIG is not all zero.
        return [np.array([-((t * 7 + len(seq)) % 13) / 4.0 for t in seq[start:]], dtype=np.float64)
                for seq, start in zip(sequences, start_indices)]

    async def warmup(self):
        await self.warm.wait()

    async def load_adapter(self, adapter):
        raise AssertionError("no adapters here")

    async def loaded_adapters(self):
        return []

    async def load_weights(self, path):
        raise AssertionError("no reloads here")

    async def check_health(self):
        return None

    def unfinished_requests(self) -> int:
        return self.unfinished

    async def close(self):
        return None
