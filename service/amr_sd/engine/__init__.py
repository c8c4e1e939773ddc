"""Engines behind one protocol (`base.Engine`): vLLM for serving, transformers as the reference."""

from __future__ import annotations

from amr_sd.engine.base import EngineSettings


def create_engine(kind: str, model: str, settings: EngineSettings | None = None):
    """The engine named by `kind` ("vllm" or "hf"); imports only what that engine needs."""
    settings = settings or EngineSettings.for_device()
    if kind == "hf":
        from amr_sd.engine.hf import HFEngine

        dtype = settings.dtype if settings.dtype != "auto" else "bfloat16"
        engine = HFEngine(model, dtype=dtype, max_model_len=settings.max_model_len)
        engine.settings = settings
        return engine
    if kind == "vllm":
        from amr_sd.engine.vllm import VLLMEngine

        return VLLMEngine.create(model, settings)
    raise ValueError(f"unknown engine {kind!r}: use 'vllm' or 'hf'")
