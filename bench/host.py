"""The machine a benchmark ran on, recorded beside its numbers.

CPU speed of this service depends on instruction sets (bf16 is emulated without AVX-512-BF16 or
AMX) and on how many cores vLLM may bind, so a figure without them cannot be compared to another.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess

# Flags that decide which dtype and kernels are fast on a CPU; the full list is kept too.
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5", the CPU-list syntax of VLLM_CPU_OMP_THREADS_BIND."""
    parts, start = [], None
    for i, c in enumerate(cpus):
        start = c if start is None else start
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            parts.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    return model, flags


def _lscpu_model() -> str | None:
    if not shutil.which("lscpu"):
        return None
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    model, flags = _cpuinfo()
    cpus = usable_cpus()
    return {
        "cpu_model": model,
        "lscpu_model_name": _lscpu_model(),
        "cpus": cpus,
        "cpu_list": cpu_list(cpus),
        "key_flags": {f: f in flags for f in KEY_FLAGS},
        "flags": flags,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("vllm-cpu", "vllm", "torch", "transformers", "trl",
                                              "orjson", "msgpack", "pydantic")},
    }


def load() -> list[float]:
    """1/5/15-minute load averages: a figure taken while other work ran is noisy."""
    return [round(x, 2) for x in os.getloadavg()]
