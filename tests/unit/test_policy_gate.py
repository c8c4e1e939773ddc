"""The policy gate and the folder checks, without an engine.

`PolicyManager` is pure asyncio bookkeeping around an engine's `load_weights`; a stand-in engine
whose load blocks on an event lets each test put a reload exactly where it wants it. The
checkpoint checks run on real (tiny) safetensors files.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from amr_client.schemas import PolicyRef, PolicyUpdate
from amr_sd.checkpoint import check_adapter, check_checkpoint, read_index, resolve_under
from amr_sd.engine.standin import StandInEngine
from amr_sd.errors import (DeadlineExceeded, EngineDead, InvalidRequest, PolicyDisabled,
                           PolicyMismatch, PolicyReloading)
from amr_sd.policy import PolicyManager

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
          "num_hidden_layers": 1, "vocab_size": 8}


def checkpoint(folder: Path, tensors: dict | None = None, **config) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else {
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
        "model.embed_tokens.weight": torch.zeros(8, 4)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**CONFIG, **config}))
    return str(folder)


class Engine(StandInEngine):
    """The stand-in engine, which records loads in `loads`; a load waits for `release` when
    `hold` is set, and fails for a path in `fail`."""

    def __init__(self, model_path: str):
        super().__init__(model_path=model_path, max_lora_rank=8,
                         lora_target_modules=("q_proj", "v_proj"))
        self.fail: set[str] = set()
        self.hold = False
        self.release = asyncio.Event()

    async def load_weights(self, path: str) -> None:
        await super().load_weights(path)
        if self.hold:
            await self.release.wait()
        if path in self.fail:
            raise RuntimeError(f"cannot load {path}")


@pytest.fixture
def root(tmp_path) -> Path:
    checkpoint(tmp_path / "base")
    checkpoint(tmp_path / "root" / "step-1")
    checkpoint(tmp_path / "root" / "step-2")
    return tmp_path


def manager(root: Path, **kwargs) -> PolicyManager:
    return PolicyManager(Engine(str(root / "base")), root=str(root / "root"), **kwargs)


async def tick(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def until(condition) -> None:
    """Let other tasks run until `condition()` holds (the checkpoint check runs in a thread)."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_a_reload_waits_for_requests_in_flight_and_holds_new_ones(root):
    async def scenario():
        policies = manager(root)
        order = []
        async with policies.serving(None) as policy:
            reload = asyncio.create_task(policies.reload(PolicyUpdate(path="step-1", version="v1"), 10))
            await until(lambda: policies.reloading)
            await tick()
            assert policies.engine.loads == []  # still scoring under base
            late = asyncio.create_task(_score(policies, order, "late"))
            await tick()
            assert order == []  # the late request waits at the closed gate
            order.append(("first", policy.version))
        status, outcome = await reload
        await late
        return policies, order, status, outcome

    async def _score(policies, order, name):
        async with policies.serving(None) as policy:
            order.append((name, policy.version))

    policies, order, status, outcome = asyncio.run(scenario())
    assert order == [("first", "base"), ("late", "v1")]
    assert outcome == "loaded" and status.version == "v1" and status.previous_version == "base"
    assert policies.engine.loads == [str(root / "root" / "step-1")]


def test_a_request_waits_at_most_wait_s_for_a_reload(root):
    async def scenario():
        policies = manager(root, wait_s=0.05)
        policies.engine.hold = True
        reload = asyncio.create_task(policies.reload(PolicyUpdate(path="step-1", version="v1"), 10))
        await until(lambda: policies.engine.loads)
        with pytest.raises(PolicyReloading) as err:
            async with policies.serving(None):
                pass
        policies.engine.release.set()
        await reload
        return err.value

    error = asyncio.run(scenario())
    assert error.status_code == 503 and error.headers["Retry-After"]


def test_a_reload_past_its_deadline_changes_nothing_and_reopens_the_gate(root):
    async def scenario():
        policies = manager(root)
        async with policies.serving(None):
            with pytest.raises(DeadlineExceeded):
                await policies.reload(PolicyUpdate(path="step-1", version="v1"), 0.05)
        async with policies.serving(None) as policy:  # not held back
            return policies, policy

    policies, policy = asyncio.run(scenario())
    assert policy.version == "base" and policies.engine.loads == []


def test_a_failed_load_restores_the_previous_weights(root):
    async def scenario():
        policies = manager(root)
        policies.engine.fail.add(str(root / "root" / "step-1"))
        with pytest.raises(InvalidRequest) as err:
            await policies.reload(PolicyUpdate(path="step-1", version="v1"), 10)
        return policies, err.value

    policies, error = asyncio.run(scenario())
    assert error.field == "path" and "'base' is still in service" in error.message
    assert policies.engine.loads == [str(root / "root" / "step-1"), str(root / "base")]
    assert policies.version == "base"


def test_a_failed_restore_is_engine_dead(root):
    async def scenario():
        policies = manager(root)
        policies.engine.fail.update({str(root / "root" / "step-1"), str(root / "base")})
        with pytest.raises(EngineDead):
            await policies.reload(PolicyUpdate(path="step-1", version="v1"), 10)

    asyncio.run(scenario())


def test_a_caller_that_leaves_mid_load_does_not_open_the_gate_early(root):
    async def scenario():
        policies = manager(root)
        policies.engine.hold = True
        reload = asyncio.create_task(policies.reload(PolicyUpdate(path="step-1", version="v1"), 10))
        await until(lambda: policies.engine.loads)
        reload.cancel()  # e.g. the client disconnected
        await tick()
        waiting = asyncio.create_task(_version(policies))
        await tick()
        assert not waiting.done()  # still loading: the gate stays shut
        policies.engine.release.set()
        return await waiting

    async def _version(policies):
        async with policies.serving(None) as policy:
            return policy.version

    assert asyncio.run(scenario()) == "v1"


def test_version_requirements_and_labels(root):
    async def scenario():
        policies = manager(root)
        await policies.reload(PolicyUpdate(path="step-1", version="v1"), 10)
        async with policies.serving(PolicyRef(version="v1")) as policy:
            assert policy.version == "v1"
        with pytest.raises(PolicyMismatch) as mismatch:
            async with policies.serving(PolicyRef(version="v0")):
                pass
        _, again = await policies.reload(PolicyUpdate(path="step-1", version="v1"), 10)
        with pytest.raises(InvalidRequest) as reused:
            await policies.reload(PolicyUpdate(path="step-2", version="v1"), 10)
        return policies, mismatch.value, again, reused.value

    policies, mismatch, again, reused = asyncio.run(scenario())
    assert mismatch.status_code == 409 and mismatch.field == "policy.version"
    assert again == "unchanged" and len(policies.engine.loads) == 1
    assert reused.field == "version"


def test_no_requests_are_counted_after_errors(root):
    async def scenario():
        policies = manager(root)
        with pytest.raises(RuntimeError):
            async with policies.serving(None):
                raise RuntimeError("scoring failed")
        # The failed request released its hold: a reload need not wait for it.
        await policies.reload(PolicyUpdate(path="step-1", version="v1"), 0.5)
        return policies

    assert asyncio.run(scenario()).version == "v1"


# --- folder checks ------------------------------------------------------------------------------


def test_paths_must_stay_under_the_root(root):
    base = str(root / "root")
    assert resolve_under(base, "step-1", "path") == os.path.realpath(root / "root" / "step-1")
    assert resolve_under(base, str(root / "root" / "step-2"), "path").endswith("step-2")
    os.symlink(root / "base", root / "root" / "link_out")
    for path in ("../base", str(root / "base"), "link_out", "step-1/../../base"):
        with pytest.raises(InvalidRequest, match="outside the policy root"):
            resolve_under(base, path, "path")
    with pytest.raises(InvalidRequest, match="not a folder"):
        resolve_under(base, "step-9", "path")
    with pytest.raises(PolicyDisabled) as off:
        resolve_under(None, "step-1", "path")
    assert off.value.status_code == 403


@pytest.mark.parametrize("tensors,config,message", [
    ({"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)}, {}, "missing, e.g. model.embed_tokens"),
    ({"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4), "model.embed_tokens.weight": torch.zeros(8, 4),
      "lm_head.weight": torch.zeros(8, 4)}, {}, "does not have, e.g. lm_head.weight"),
    ({"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4),
      "model.embed_tokens.weight": torch.zeros(8, 4, dtype=torch.int32)}, {}, "floating point"),
    (None, {"hidden_size": 8}, "hidden_size = 8"),
])
def test_a_checkpoint_must_match_the_served_tensors(root, tensors, config, message):
    served = str(root / "base")
    folder = checkpoint(root / "root" / "bad", tensors, **config)
    with pytest.raises(InvalidRequest, match=message) as err:
        check_checkpoint(folder, served, read_index(served, "path"))
    assert err.value.field == "path"
    check_checkpoint(str(root / "root" / "step-1"), served, read_index(served, "path"))  # a good one passes


def adapter(folder: Path, config: dict, tensors: dict) -> str:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return str(folder)


LORA = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 4),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(4, 2)}


@pytest.mark.parametrize("config,tensors,message", [
    ({"r": 16}, LORA, "rank 16 is not within 1..8"),
    ({"r": 2, "target_modules": ["q_proj", "lm_head"]}, LORA, "changes lm_head"),
    ({"r": 2, "modules_to_save": ["embed_tokens"]}, LORA, "changes embed_tokens"),
    ({"r": 2}, {**LORA, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 3)},
     r"needs \[2, 4\]"),
    ({"r": 2}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 4)},
     "lora_B beside it"),
    ({"r": 2}, {"base_model.model.model.layers.3.mlp.up_proj.lora_A.weight": torch.zeros(2, 4)},
     "does not adapt a layer"),
    ({"r": 2, "peft_type": "IA3"}, LORA, "not describe a LoRA"),
])
def test_an_adapter_must_fit_the_served_model(root, config, tensors, message):
    served = read_index(str(root / "base"), "path")
    folder = adapter(root / "root" / "lora", config, tensors)
    with pytest.raises(InvalidRequest, match=message) as err:
        check_adapter(folder, 8, ("q_proj", "v_proj"), served, "policy.lora_path")
    assert err.value.field == "policy.lora_path"


def test_a_good_adapter_passes(root):
    served = read_index(str(root / "base"), "path")
    check_adapter(adapter(root / "root" / "lora", {"r": 2, "target_modules": ["q_proj"]}, LORA), 8,
                  ("q_proj", "v_proj"), served, "policy.lora_path")


def test_an_adapter_on_a_layer_the_engine_does_not_adapt_is_refused(root):
    # vLLM would load it and score without it on that layer.
    served = read_index(str(root / "base"), "path")
    folder = adapter(root / "root" / "lora", {"r": 2, "target_modules": ["q_proj"]}, LORA)
    with pytest.raises(InvalidRequest, match="adapts only v_proj, o_proj layers"):
        check_adapter(folder, 8, ("v_proj", "o_proj"), served, "policy.lora_path")


# --- settings -----------------------------------------------------------------------------------


def test_policy_settings_are_checked_at_start(tmp_path):
    from pydantic import ValidationError

    from amr_sd.config import Settings

    settings = Settings(policy_root=str(tmp_path), lora_modules=f"sft={tmp_path}/a, rl={tmp_path}/b")
    assert settings.lora_module_paths() == {"sft": f"{tmp_path}/a", "rl": f"{tmp_path}/b"}
    for bad, message in [({"policy_root": str(tmp_path / "missing")}, "is not a folder"),
                         ({"lora_modules": "sft"}, "is not NAME=PATH"),
                         ({"lora_modules": "a=/x,a=/y"}, "given twice"),
                         ({"lora_modules": "bad name=/x"}, "use letters"),
                         ({"policy_version": "step 1"}, "pattern"),
                         ({"lora_target_modules": ()}, "at least 1")]:
        with pytest.raises(ValidationError, match=message):
            Settings(**bad)
