"""What this CPU computes fast, and the vLLM CPU settings that follow from it.

Measured on a 2-core AMD EPYC with AVX2 and no AVX-512 (docs/speed.md): vLLM CPU scored 35 tok/s
in bf16 with its automatic thread binding (one OpenMP thread on core 0, the other core reserved),
195 tok/s in float32, and 406 tok/s in float32 with both cores bound. Without AVX-512-BF16 or AMX,
torch emulates bf16 matmuls in float32 plus conversions; so bf16 only where the CPU has them.

`cpu_defaults` is pure (flags and CPU ids in, choices and reasons out) so every branch is tested
from a made-up flag list; `read_cpu` reads the machine it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Any of these means native bf16 matmuls (oneDNN uses them through torch).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Up to this many CPUs, vLLM's OpenMP threads get every one of them (see cpu_defaults).
SMALL_MACHINE_CPUS = 4


@dataclass(frozen=True)
class CpuInfo:
    model_name: str
    flags: frozenset[str]
    cpus: tuple[int, ...]  # the CPU ids this process may run on


@dataclass(frozen=True)
class CpuChoice:
    dtype: str
    threads_bind: str  # a VLLM_CPU_OMP_THREADS_BIND value
    reasons: dict[str, str]  # EngineSettings field -> why


def read_cpu() -> CpuInfo:
    model, flags = "unknown", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else \
        tuple(range(os.cpu_count() or 1))
    return CpuInfo(model, flags, cpus)


def native_bf16(flags: frozenset[str]) -> bool:
    return any(f in flags for f in BF16_FLAGS)


def cpu_list(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> "0-2,5": vLLM's CPU list syntax."""
    parts, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            parts.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


def cpu_defaults(info: CpuInfo, env: dict[str, str] | None = None) -> CpuChoice:
    """dtype and thread binding for vLLM on this CPU; an explicit VLLM_CPU_OMP_THREADS_BIND wins."""
    env = os.environ if env is None else env
    if native_bf16(info.flags):
        found = ", ".join(f for f in BF16_FLAGS if f in info.flags)
        dtype, why_dtype = "bfloat16", f"the CPU computes bf16 natively ({found})"
    else:
        dtype, why_dtype = "float32", ("no native bf16 on this CPU (neither avx512_bf16 nor "
                                       "amx_bf16): bf16 matmuls ran ~7x slower than float32")
    given = env.get("VLLM_CPU_OMP_THREADS_BIND")
    if given:
        bind, why_bind = given, "VLLM_CPU_OMP_THREADS_BIND is set"
    elif len(info.cpus) <= SMALL_MACHINE_CPUS:
        bind = cpu_list(info.cpus)
        why_bind = ("every CPU this process may use: vLLM's automatic binding leaves one core "
                    "to its scheduler, which halved scoring speed on 2 cores")
    else:
        # One reserved core of many costs little, and auto skips SMT siblings and follows NUMA.
        bind, why_bind = "auto", (f"vLLM's automatic binding: of {len(info.cpus)} CPUs, the "
                                  "core it reserves for its scheduler costs little")
    return CpuChoice(dtype, bind, {"dtype": why_dtype, "cpu_threads_bind": why_bind})
