"""Server settings, each declared once: an `AMR_*` environment variable and an `amr-sd serve` flag
(flags win), with its default and meaning.

Each section below is one group of `amr-sd serve --help` and of docs/server-config.md; `amr-sd
score` takes the model and engine sections as flags. config_flags.py turns them into both.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from amr_sd.engine.base import EngineSettings
from amr_sd.engine.machine import BF16_FLAGS, SMALL_MACHINE_CPUS
from amr_sd.engine.models import EMBEDDED_MODEL

ENV_PREFIX = "AMR_"


class ModelChoice(BaseModel):
    """the model and the engine that runs it"""

    model: str = Field(EMBEDDED_MODEL, description="Embedded name, local HF folder or hub id.")
    engine: Literal["vllm", "hf"] = Field(
        "vllm", description="vllm serves; hf is a plain transformers forward pass, the numeric "
                            "reference (no LoRA adapters).")


class EngineKnobs(BaseModel):
    """engine settings (unset: chosen for this machine's device)"""

    dtype: str | None = Field(
        None, description="bfloat16, float16, float32 or auto. On a CPU: bfloat16 only where the "
                          f"CPU computes it natively ({' or '.join(BF16_FLAGS)}), else float32.")
    max_model_len: int | None = Field(
        None, ge=16, description="Longest prompt + response in tokens; unset on a GPU: the "
                                 "model's own context length.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of GPU memory for vLLM (on the CPU build: of RAM, "
                                      "keep it <= 0.5). Setting it sizes the KV cache from it "
                                      "unless kv_cache_gib is set too.")
    kv_cache_gib: float | None = Field(
        None, gt=0, description="A fixed KV cache size (GiB); wins over gpu_memory_utilization. "
                                "Unset on a GPU: sized from gpu_memory_utilization.")
    cpu_threads_bind: str | None = Field(
        None, min_length=1, description="vLLM CPU's VLLM_CPU_OMP_THREADS_BIND: auto, nobind or a "
                                        "CPU list such as 0-3. On a CPU: every CPU on machines of "
                                        f"up to {SMALL_MACHINE_CPUS}, else auto; an explicit "
                                        "VLLM_CPU_OMP_THREADS_BIND wins.")
    enforce_eager: bool | None = Field(
        None, description="Skip CUDA graphs and torch.compile: a faster start, slower steps.")
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens per engine step; bounds the memory of a step's "
                                 "prompt-logprob logits.")
    prefix_caching: bool | None = Field(
        None, description="vLLM's prefix cache, which a writer's retry reads (scoring never "
                          "does).")
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="GPUs one engine shards the model over (vLLM).")
    data_parallel_size: int | None = Field(
        None, ge=1, description="Engine copies in this server (vLLM's data parallelism): "
                                "each holds the whole model and its own KV cache, and "
                                "vLLM spreads requests over them; a GPU server uses "
                                "tensor_parallel_size x data_parallel_size GPUs. On a CPU "
                                "the cpu_threads_bind CPUs are split between them. vLLM "
                                "engine only.")
    enable_lora: bool | None = Field(
        None, description="Serve LoRA adapters per request (vLLM); on, every engine step runs "
                          "LoRA kernels.")
    max_lora_rank: int | None = Field(None, ge=1, le=512,
                                      description="Largest adapter rank accepted.")
    max_loras: int | None = Field(None, ge=1, description="Different adapters in one engine step.")
    max_cpu_loras: int | None = Field(
        None, ge=1, description="Adapters kept loaded (an LRU); a later use of an evicted one "
                                "reloads it.")
    lora_target_modules: tuple[str, ...] | None = Field(
        None, min_length=1, description="Layer names adapters may change: a JSON list in the "
                                        'environment (["q_proj", "v_proj"]), comma-separated as a '
                                        "flag. The default is the Llama-family projections, never "
                                        "lm_head.")

    def engine_settings(self) -> EngineSettings:
        """The device's defaults, then every knob that is set."""
        return EngineSettings.for_device().with_overrides(
            **{name: getattr(self, name) for name in EngineKnobs.model_fields})


class Listening(BaseModel):
    """where it listens"""

    # Loopback by default: exposing a scoring engine is a deliberate choice (--host 0.0.0.0).
    host: str = Field("127.0.0.1", description="Listen address; 0.0.0.0 serves other machines "
                                               "(docs/server.md: Running it safely).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    grpc_port: int | None = Field(None, ge=1, le=65535,
                                  description="Serve gRPC (amr_sd.v1) too, on this port (same "
                                              "host, same engine); unset: HTTP only.")


class Caches(BaseModel):
    """caches"""

    redis_url: str | None = Field(
        None, description="Redis for the reflection cache, the score cache and idempotent replays, "
                          "e.g. redis://127.0.0.1:6379/0; unset: each in process.")
    cache_ttl_s: float = Field(86400.0, gt=0, description="Lifetime of a cached reflection.")
    cache_max_entries: int = Field(100_000, ge=1, description="In-process reflection cache size.")
    score_cache_ttl_s: float = Field(
        3600.0, ge=0, description="Lifetime of a cached scoring pass (a resent group at the same "
                                  "policy version is not scored again); 0 turns that cache off.")
    score_cache_max_entries: int = Field(20_000, ge=1, description="In-process score cache size "
                                                                   "(passes).")


class PolicySync(BaseModel):
    """policy sync (docs/policy-sync.md)"""

    policy_root: str | None = Field(
        None, description="The only folder (and below) that POST /v1/policy and `policy.lora_path` "
                          "may load from; unset turns loading from a path off.")
    policy_version: str = Field("base", min_length=1, max_length=128,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+@-]*$",
                                description="Label of the weights the service starts with.")
    policy_wait_s: float = Field(30.0, ge=0, description="How long a request waits for a reload "
                                 "before 503 + Retry-After.")
    lora_modules: str | None = Field(
        None, description="Adapters requests may name with policy.lora_name: NAME=PATH,..., "
                          "checked at start-up.")

    @field_validator("policy_root")
    @classmethod
    def _existing_folder(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isdir(value):
            raise ValueError(f"{value!r} is not a folder")
        return value

    @field_validator("lora_modules")
    @classmethod
    def _pairs(cls, value: str | None) -> str | None:
        if value is not None:
            parse_lora_modules(value)
        return value

    def lora_module_paths(self) -> dict[str, str]:
        return parse_lora_modules(self.lora_modules) if self.lora_modules else {}


class Limits(BaseModel):
    """limits, checked before any engine work (docs/server.md: Running it safely); /v1/info reports them"""

    # Request caps (413).
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                description="Request body, with or without Content-Length.")
    max_groups: int = Field(1024, ge=1, description="Groups per request.")
    max_rollouts: int = Field(8192, ge=1, description="Rollouts per request.")
    max_tokens: int = Field(4_000_000, ge=1, description="Response tokens per request.")
    # Admission (429 over the bound): the requests admitted and not yet answered, all clients.
    max_pending_sequences: int = Field(4096, ge=1, description="Rollouts admitted and not yet "
                                                               "answered before 429.")
    max_pending_tokens: int = Field(2_000_000, ge=1, description="Response tokens admitted and not "
                                                                 "yet answered before 429.")
    # Deadlines (504, engine work aborted).
    request_timeout_s: float = Field(600.0, gt=0, description="A request's deadline unless it "
                                                              "asks for another with "
                                                              "X-Request-Timeout.")
    max_request_timeout_s: float = Field(3600.0, gt=0, description="The longest deadline "
                                                                   "X-Request-Timeout may ask for.")


class Guards(BaseModel):
    """replays, shutdown and access (docs/server.md: Running it safely)"""

    idempotency_ttl_s: float = Field(3600.0, gt=0, description="How long an answer is replayed "
                                                               "to a retry with its "
                                                               "Idempotency-Key.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight "
                                                           "requests may finish.")
    api_keys: SecretStr | None = Field(None, description="Comma-separated bearer tokens; unset: no "
                                                         "authentication. Environment only, so the "
                                                         "keys never show in `ps`.")
    metrics_require_key: bool = Field(False, description="Put /metrics behind the keys too.")

    def keys(self) -> list[bytes]:
        if self.api_keys is None:
            return []
        return [k.strip().encode() for k in self.api_keys.get_secret_value().split(",") if k.strip()]


# In the order of `amr-sd serve --help` and docs/server-config.md.
SECTIONS = (ModelChoice, Listening, EngineKnobs, Caches, PolicySync, Limits, Guards)


class Settings(*SECTIONS, BaseSettings):
    """Every section, read from `amr-sd serve` flags and `AMR_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    @model_validator(mode="after")
    def _engine_copies(self) -> "Settings":
        check_engine_copies(self, self)
        return self

    def limits(self) -> dict:
        return {name: getattr(self, name) for name in Limits.model_fields}


def check_engine_copies(choice: ModelChoice, knobs: EngineKnobs) -> None:
    """Several engine copies (data_parallel_size > 1), checked before any engine starts: only vLLM
    runs them, and on a CPU each needs CPUs of its own. Raises a ValidationError naming
    data_parallel_size, as a bad value of that one field does."""
    copies = knobs.data_parallel_size or 1
    if copies == 1:
        return
    if choice.engine != "vllm":
        problem = (f"the {choice.engine} engine runs one model copy in this process: set "
                   "--data-parallel-size (AMR_DATA_PARALLEL_SIZE) to 1, or use --engine vllm")
    else:
        try:
            knobs.engine_settings()
            return
        except ValueError as exc:
            problem = str(exc)
    raise ValidationError.from_exception_data(type(knobs).__name__, [InitErrorDetails(
        type=PydanticCustomError("value_error", problem), loc=("data_parallel_size",),
        input=copies)])


def engine_report(settings: EngineSettings) -> dict:
    """/v1/info's engine_settings: `describe()`, which GetInfo's EngineSettings message carries,
    and every other knob a user can set (the LoRA ones), which only the JSON answer has room for."""
    described = settings.describe()
    reasons = described.pop("reasons")
    rest = {name: getattr(settings, name) for name in EngineKnobs.model_fields
            if name not in described}
    return {**described, **rest, "reasons": reasons}


def parse_lora_modules(value: str) -> dict[str, str]:
    """"a=/ckpt/a,b=/ckpt/b" -> {"a": "/ckpt/a", "b": "/ckpt/b"}."""
    modules = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{item!r} is not NAME=PATH")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}", name.strip()):
            raise ValueError(f"adapter name {name.strip()!r}: use letters, digits and ._:+@-")
        if name.strip() in modules:
            raise ValueError(f"adapter name {name.strip()!r} is given twice")
        modules[name.strip()] = path.strip()
    return modules
