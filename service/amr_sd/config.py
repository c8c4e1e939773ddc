"""Server settings: `amr-sd serve` flags and `AMR_*` environment variables (flags win)."""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from amr_sd.engine.base import ENGINE_FLAGS, EngineSettings
from amr_sd.engine.models import EMBEDDED_MODEL


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AMR_", extra="forbid")

    model: str = Field(EMBEDDED_MODEL, description="Embedded name, local HF folder or hub id.")
    engine: Literal["vllm", "hf"] = "vllm"
    # Loopback by default: exposing a scoring engine is a deliberate choice (--host 0.0.0.0).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int | None = Field(None, ge=1, le=65535,
                                  description="Serve gRPC too, on this port (same host, same engine).")
    redis_url: str | None = Field(None, description="Reflection cache; absent -> in-process LRU.")
    cache_ttl_s: float = Field(86400.0, gt=0, description="Lifetime of a cached reflection.")
    cache_max_entries: int = Field(100_000, ge=1, description="In-process cache size.")
    score_cache_ttl_s: float = Field(
        3600.0, ge=0, description="Lifetime of a cached scoring pass (a resent group at the same "
                                  "policy version is not scored again); 0 turns that cache off.")
    score_cache_max_entries: int = Field(20_000, ge=1, description="In-process score cache size "
                                                                   "(passes).")

    # Engine knobs; None keeps the device default (EngineSettings.for_device).
    dtype: str | None = None
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_gib: float | None = Field(None, gt=0, description="A fixed KV cache size (GiB).")
    cpu_threads_bind: str | None = Field(
        None, min_length=1, description="vLLM CPU's VLLM_CPU_OMP_THREADS_BIND: auto, nobind or a "
                                        "CPU list such as 0-3.")
    enforce_eager: bool | None = None
    max_num_batched_tokens: int | None = Field(None, ge=16)
    prefix_caching: bool | None = Field(None, description="vLLM's prefix cache, which a writer's "
                                                          "retry reads (scoring never does).")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs one engine shards the "
                                                                     "model over (vLLM).")
    enable_lora: bool | None = Field(None, description="Serve LoRA adapters per request (vLLM).")
    max_lora_rank: int | None = Field(None, ge=1, le=512)
    max_loras: int | None = Field(None, ge=1, description="Different adapters in one engine step.")
    max_cpu_loras: int | None = Field(None, ge=1, description="Adapters kept loaded (LRU).")
    lora_target_modules: tuple[str, ...] | None = Field(
        None, min_length=1, description='Layer names adapters may change, e.g. ["q_proj", "v_proj"].')

    # Policy sync (README "Keeping the teacher on the current policy").
    policy_root: str | None = Field(
        None, description="The only folder (and below) that POST /v1/policy and `policy.lora_path` "
                          "may load from; unset turns loading from a path off.")
    policy_version: str = Field("base", min_length=1, max_length=128,
                                pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+@-]*$",
                                description="Label of the weights the service starts with.")
    policy_wait_s: float = Field(30.0, ge=0, description="How long a request waits for a reload "
                                 "before 503 + Retry-After.")
    lora_modules: str | None = Field(None, description="Adapters requests may name: NAME=PATH,...")

    # Request caps, checked before any engine work (413).
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_groups: int = Field(1024, ge=1)
    max_rollouts: int = Field(8192, ge=1)
    max_tokens: int = Field(4_000_000, ge=1, description="Response tokens per request.")

    # Admission (429 over the bound, before any engine work): rollouts and response tokens of
    # the requests admitted and not yet answered, across all clients.
    max_pending_sequences: int = Field(4096, ge=1)
    max_pending_tokens: int = Field(2_000_000, ge=1)

    # Deadlines (504, engine work aborted): the default, and the most a client may ask for with
    # the X-Request-Timeout header.
    request_timeout_s: float = Field(600.0, gt=0)
    max_request_timeout_s: float = Field(3600.0, gt=0)
    idempotency_ttl_s: float = Field(3600.0, gt=0, description="How long an answer is replayed.")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM: how long in-flight requests may finish.")

    # Comma-separated bearer tokens; unset = no authentication. Environment only: a flag would
    # show the keys in `ps`.
    api_keys: SecretStr | None = None
    metrics_require_key: bool = False

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

    def engine_settings(self) -> EngineSettings:
        return EngineSettings.for_device().with_overrides(
            **{name: getattr(self, name) for name in ENGINE_FLAGS})

    def limits(self) -> dict:
        return {"max_body_bytes": self.max_body_bytes, "max_groups": self.max_groups,
                "max_rollouts": self.max_rollouts, "max_tokens": self.max_tokens,
                "max_pending_sequences": self.max_pending_sequences,
                "max_pending_tokens": self.max_pending_tokens,
                "request_timeout_s": self.request_timeout_s,
                "max_request_timeout_s": self.max_request_timeout_s}

    def keys(self) -> list[bytes]:
        if self.api_keys is None:
            return []
        return [k.strip().encode() for k in self.api_keys.get_secret_value().split(",") if k.strip()]


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
