"""Engines behind one protocol (`base.Engine`): vLLM for serving, transformers as the reference;
`standin.StandInEngine` for tests and benchmarks of everything around the engine."""

from __future__ import annotations

from amr_sd.engine.base import Engine, EngineSettings


def create_engine(kind: str, model: str, settings: EngineSettings | None = None) -> Engine:
    """The engine named by `kind` ("vllm" or "hf"); imports only what that engine needs."""
    settings = settings or EngineSettings.for_device()
    if kind == "hf":
        from amr_sd.engine.hf import HFEngine

        return HFEngine(model, settings)
    if kind == "vllm":
        from amr_sd.engine.vllm import VLLMEngine

        return VLLMEngine.create(model, settings)
    raise ValueError(f"unknown engine {kind!r}: use 'vllm' or 'hf'")
