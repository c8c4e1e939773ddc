"""Checks on a weights folder before the engine sees it: where it is, and what it holds.

Both engine paths fail badly on a bad folder. vLLM's in-place reload only logs a warning for a
tensor it did not find (the old values stay, mixed with the new ones) and stops half-way on a
wrong shape; a request naming a LoRA adapter vLLM cannot load kills the engine core. So a folder
is checked here first, from the safetensors headers alone (no tensor data is read), against the
checkpoint the engine started on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from amr_sd.errors import InvalidRequest, PolicyDisabled

# What makes two checkpoints the same model: vLLM builds its layers from these.
ARCHITECTURE_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size",
                     "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "vocab_size", "tie_word_embeddings")
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def resolve_under(root: str | None, path: str, field: str) -> str:
    """`path` (absolute, or relative to `root`) as a real directory inside `root`.

    Symlinks are resolved before the check, so neither `..` nor a link can leave the root.
    """
    if root is None:
        raise PolicyDisabled("loading weights from a folder is off: start the service with "
                             "AMR_POLICY_ROOT (--policy-root) set to the folder trainers write to",
                             field=field)
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, path))  # an absolute `path` replaces the root
    if os.path.commonpath([real, real_root]) != real_root:
        raise InvalidRequest(f"{path!r} is outside the policy root {root!r}", field=field)
    if not os.path.isdir(real):
        raise InvalidRequest(f"{path!r} is not a folder under the policy root", field=field)
    return real


@dataclass(frozen=True)
class TensorIndex:
    """name -> (dtype, shape) of every tensor of a folder's *.safetensors files."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]


def read_index(folder: str, field: str) -> TensorIndex:
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise InvalidRequest("no *.safetensors file in the folder", field=field)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in files:
        try:
            # Parses and checks the header, including that the data is all there (a truncated
            # file fails here); tensor bytes are only mapped, never read.
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    part = f.get_slice(name)
                    tensors[name] = (part.get_dtype(), tuple(part.get_shape()))
        except Exception as exc:
            raise InvalidRequest(f"{file.name} is not a readable safetensors file: {exc}",
                                 field=field) from None
    return TensorIndex(tensors)


def read_json(folder: str, name: str, field: str, saved_by: str) -> dict:
    """`folder/name` as a JSON object; `saved_by` tells the user what writes the file."""
    try:
        with open(os.path.join(folder, name)) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise InvalidRequest(f"no {name} in the folder (save it with {saved_by})", field=field) from None
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{name} is not readable JSON: {exc}", field=field) from None
    if not isinstance(config, dict):
        raise InvalidRequest(f"{name} is not a JSON object", field=field)
    return config


def read_config(folder: str, field: str) -> dict:
    return read_json(folder, "config.json", field, "save_pretrained")


def check_checkpoint(folder: str, served: str, served_index: TensorIndex, field: str = "path") -> None:
    """Refuse a folder that is not exactly the served model's set of tensors and shapes."""
    config, served_config = read_config(folder, field), read_config(served, field)
    for key in ARCHITECTURE_KEYS:
        if config.get(key) != served_config.get(key):
            raise InvalidRequest(f"another architecture: config.json has {key} = "
                                 f"{config.get(key)!r}, the served model {served_config.get(key)!r}",
                                 field=field)
    got, want = read_index(folder, field).tensors, served_index.tensors
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    if missing:
        raise InvalidRequest(f"{len(missing)} tensor(s) of the served model are missing, e.g. "
                             f"{', '.join(missing[:3])}", field=field)
    if extra:
        raise InvalidRequest(f"{len(extra)} tensor(s) the served model does not have, e.g. "
                             f"{', '.join(extra[:3])}", field=field)
    for name, (dtype, shape) in sorted(got.items()):
        if shape != want[name][1]:
            raise InvalidRequest(f"tensor {name} has shape {list(shape)}, the served model "
                                 f"{list(want[name][1])}", field=field)
        if dtype not in FLOAT_DTYPES:
            raise InvalidRequest(f"tensor {name} is {dtype}; weights must be floating point "
                                 f"({', '.join(sorted(FLOAT_DTYPES))})", field=field)


def check_adapter(folder: str, max_rank: int, targets: tuple[str, ...], served_index: TensorIndex,
                  field: str) -> None:
    """Refuse a folder that is not a PEFT LoRA adapter of the served model within the engine's
    rank cap and target layers (`targets`: layer names, e.g. q_proj).

    Every lora_A must be (r, in) and every lora_B (out, r) for a layer the served model has:
    vLLM loads a narrower matrix without complaint and scores with it.
    """
    config = read_json(folder, "adapter_config.json", field, "peft's save_pretrained")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidRequest("adapter_config.json does not describe a LoRA adapter", field=field)
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    bad = [r for r in ranks if not (isinstance(r, int) and 0 < r <= max_rank)]
    if bad:
        raise InvalidRequest(f"LoRA rank {bad[0]!r} is not within 1..{max_rank} (this service's "
                             "--max-lora-rank)", field=field)
    named = config.get("target_modules") or []  # a list, or a regex string we cannot read here
    heads = sorted({"lm_head", "embed_tokens"} & (set(named) if isinstance(named, list) else set())
                   | set(config.get("modules_to_save") or []))
    if heads:
        raise InvalidRequest(f"the adapter changes {', '.join(heads)}; only the transformer's "
                             "projections may be adapted (vLLM cannot score prompt tokens with a "
                             "LoRA on the output head)", field=field)
    if not os.path.exists(os.path.join(folder, "adapter_model.safetensors")):
        raise InvalidRequest("no adapter_model.safetensors in the folder", field=field)
    _check_lora_shapes(read_index(folder, field), targets, served_index, field)


def _check_lora_shapes(adapter: TensorIndex, targets: tuple[str, ...], served: TensorIndex,
                       field: str) -> None:
    for name, (_, shape) in sorted(adapter.tensors.items()):
        layer, _, part = name.removeprefix("base_model.model.").rpartition(".lora_")
        base = served.tensors.get(layer + ".weight")
        if base is None or part not in ("A.weight", "B.weight") or len(shape) != 2:
            raise InvalidRequest(f"adapter tensor {name} does not adapt a layer of the served model",
                                 field=field)
        if layer.rpartition(".")[2] not in targets:
            # vLLM 0.32 loads such an adapter and silently skips the layer (seen with o_proj).
            raise InvalidRequest(f"the adapter changes {layer}; this service adapts only "
                                 f"{', '.join(targets)} layers (--lora-target-modules)", field=field)
        out_features, in_features = base[1]
        other = adapter.tensors.get(f"{name[:-len(part)]}{'B' if part[0] == 'A' else 'A'}.weight")
        rank = shape[0] if part[0] == "A" else shape[1]
        want = [rank, in_features] if part[0] == "A" else [out_features, rank]
        if list(shape) != want or other is None:
            raise InvalidRequest(f"adapter tensor {name} has shape {list(shape)}, the served layer "
                                 f"needs {want} with its lora_{'B' if part[0] == 'A' else 'A'} "
                                 "beside it", field=field)
