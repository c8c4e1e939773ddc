"""Weights folders for the policy-sync tests, made from the embedded model's checkpoint.

Everything lands under one policy root: a hard-linked copy of the original weights, a perturbed
copy (one layer scaled), broken checkpoints of every kind the service must refuse, and two PEFT
LoRA adapters (rank 8, and rank 16 for a service capped at 8) with two broken variants: one
with a matrix of the wrong shape, one that only vLLM's loader refuses (DoRA).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

PERTURBED_TENSOR = "model.layers.3.mlp.down_proj.weight"
LORA_TARGETS = ["q_proj", "v_proj"]


def _link_copy(src: Path, dst: Path) -> None:
    # Hard links: real files inside the root (a symlink out of it is refused), no 270 MB copy.
    dst.mkdir(parents=True)
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def _with_tensors(src: Path, dst: Path, edit) -> None:
    _link_copy(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    (dst / "model.safetensors").unlink()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def _with_config(src: Path, dst: Path, config_name: str = "config.json", **changes) -> None:
    _link_copy(src, dst)
    config = json.loads((src / config_name).read_text())
    (dst / config_name).unlink()
    (dst / config_name).write_text(json.dumps({**config, **changes}))


def make_policy_root(root: Path, base: str) -> dict[str, Path]:
    """Create every folder under `root`; returns name -> folder."""
    import torch

    base_dir = Path(base)
    out = {name: root / name for name in (
        "original", "perturbed", "missing_tensor", "wrong_shape", "wrong_arch", "truncated",
        "no_config", "lora", "lora_rank16", "lora_bad_shape", "lora_dora")}
    _link_copy(base_dir, out["original"])

    def scale(t):
        t[PERTURBED_TENSOR] = (t[PERTURBED_TENSOR].float() * 1.5).to(t[PERTURBED_TENSOR].dtype)

    _with_tensors(base_dir, out["perturbed"], scale)
    _with_tensors(base_dir, out["missing_tensor"], lambda t: t.pop("model.layers.5.self_attn.q_proj.weight"))
    _with_tensors(base_dir, out["wrong_shape"], lambda t: t.update(
        {"model.layers.7.mlp.up_proj.weight": t["model.layers.7.mlp.up_proj.weight"][:-64].clone()}))
    _with_config(base_dir, out["wrong_arch"], num_hidden_layers=29)
    _link_copy(base_dir, out["truncated"])
    whole = (base_dir / "model.safetensors").read_bytes()
    (out["truncated"] / "model.safetensors").unlink()
    (out["truncated"] / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    _link_copy(base_dir, out["no_config"])
    (out["no_config"] / "config.json").unlink()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name, rank in (("lora", 8), ("lora_rank16", 16)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        # Random A and B (PEFT's default B = 0 would make the adapter a no-op).
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules=LORA_TARGETS,
                                                      init_lora_weights=False))
        peft_model.save_pretrained(str(out[name]))
    # Passes the service's own checks (config, rank, a readable file) but not vLLM's loader.
    _link_copy(out["lora"], out["lora_bad_shape"])
    adapter = out["lora_bad_shape"] / "adapter_model.safetensors"
    tensors = load_file(str(adapter))
    first_a = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[first_a] = tensors[first_a][:, :100].clone()
    adapter.unlink()
    save_file(tensors, str(adapter))
    # Passes the service's checks; vLLM's add_lora refuses it (no DoRA).
    _with_config(out["lora"], out["lora_dora"], config_name="adapter_config.json", use_dora=True)
    return out
