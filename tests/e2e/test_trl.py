"""TRL's own GRPOTrainer trains the embedded model with AMR-SD advantages from a real server.

Every check looks at what reached the loss (`_compute_loss`'s inputs), after TRL shuffled and
split the generation batch, and matches rows back by their (prompt, completion) token ids.
"""

from __future__ import annotations

import json
import logging
import socket

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from amr_client import AMRClient, APIConnectionError
from amr_client.integrations.trl import AMRGRPOTrainer
from amr_client.saved import VIEW_RETURNS
from amr_sd.engine.models import materialize_embedded
from amr_sd.viewer import build, read_batch

pytestmark = pytest.mark.e2e

GROUP = 4
# Step 0 at full weight, step 1 at anneal weight 0 (u = 1 / 1). Short greedy reflections, no
# retries, τ = 0 so that any accepted reflection moves some tokens.
AMR_CONFIG = {"decay_steps": 1, "max_reflection_tokens": 32, "max_retries": 0,
              "tau_pos": 0.0, "tau_neg": 0.0}
QUESTIONS = ["What is 3 + 4?", "What is 9 - 5?", "What is 2 * 6?", "What is 8 + 1?"]


def alternating_reward(completions, log_extra, **_):
    """Rows of a group are consecutive, so this gives every group rewards [0, 1, 0, 1]: mixed
    groups, the ones AMR-SD has something to say about. The failed ones get verifier feedback."""
    rewards = [float(i % 2) for i in range(len(completions))]
    log_extra("amr_feedback", ["The final answer is wrong." if r == 0 else "" for r in rewards])
    return rewards


class RecordingClient(AMRClient):
    """A real client that keeps every request's groups and the service's answer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def score(self, groups, *, step, config=None, returns=None, policy=None):
        result = super().score(groups, step=step, config=config, returns=returns, policy=policy)
        self.calls.append({"groups": list(groups), "step": step, "result": result, "policy": policy,
                           "returns": returns})
        return result


def key(prompt_ids, prompt_mask, completion_ids, length) -> tuple:
    return (tuple(prompt_ids[prompt_mask.bool()].tolist()), tuple(completion_ids[:length].tolist()))


@pytest.fixture(scope="module")
def model_path():
    return str(materialize_embedded())


def make_trainer(model_path, tmp_path, client, *, max_steps, learning_rate=1e-6, **amr):
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=2 * GROUP,
        num_generations=GROUP, max_completion_length=16, learning_rate=learning_rate, logging_steps=1,
        report_to="none", use_cpu=True, bf16=False, save_strategy="no", seed=0)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS])
    return AMRGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        processing_class=AutoTokenizer.from_pretrained(model_path),
        reward_funcs=[alternating_reward], args=args, train_dataset=dataset,
        amr_client=client, **amr)


@pytest.fixture
def recorded(monkeypatch):
    """Records TRL's own GRPO output (before the adapter) and every loss input."""
    seen = {"grpo": [], "loss": []}
    own = GRPOTrainer._generate_and_score_completions

    def grpo_output(self, inputs):
        output = own(self, inputs)
        seen["grpo"].append({k: v.clone() for k, v in output.items() if torch.is_tensor(v)})
        return output

    loss = GRPOTrainer._compute_loss

    def loss_input(self, model, inputs):
        seen["loss"].append({k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)})
        return loss(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", grpo_output)
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", loss_input)
    return seen


def assert_loss_rows_are_trls_grpo(recorded, step, atol):
    """Every loss row holds TRL's own GRPO advantage of its completion on each token, 0 after."""
    grpo = recorded["grpo"][step]
    own = {}
    for i in range(len(grpo["completion_ids"])):
        length = int(grpo["completion_mask"][i].sum())
        k = key(grpo["prompt_ids"][i], grpo["prompt_mask"][i], grpo["completion_ids"][i], length)
        own.setdefault(k, []).append(float(grpo["advantages"][i]))
    batch = recorded["loss"][step]
    for i in range(len(batch["advantages"])):
        length = int(batch["completion_mask"][i].sum())
        k = key(batch["prompt_ids"][i], batch["prompt_mask"][i], batch["completion_ids"][i], length)
        row = batch["advantages"][i]
        assert any(abs(float(row[0]) - a) <= atol for a in own[k]), (float(row[0]), own[k])
        assert torch.all(row[:length] == row[0]) and torch.all(row[length:] == 0)


def test_two_grpo_steps_train_on_exactly_the_service_advantages(amr_server, model_path, tmp_path,
                                                                 recorded):
    client = RecordingClient(amr_server)
    saved = tmp_path / "saved"
    trainer = make_trainer(model_path, tmp_path, client, max_steps=2, amr_config=AMR_CONFIG,
                           amr_save_dir=saved, amr_save_steps=2)
    trainer.train()

    assert trainer.state.global_step == 2
    assert [c["step"] for c in client.calls] == [0, 1]
    assert len(recorded["loss"]) == 2

    # Step 0, anneal weight 1: the loss sees the service's per-token advantages, bit for bit,
    # at the completion's tokens and 0 on the padding.
    call = client.calls[0]
    assert call["result"].anneal_weight == 1.0
    sent = [(tuple(g["prompt"]["prompt_token_ids"]), tuple(r["token_ids"]))
            for g in call["groups"] for r in g["rollouts"]]
    service = {}
    for k, values in zip(sent, call["result"].advantages(), strict=True):
        service.setdefault(k, []).append(torch.tensor(values, dtype=torch.float32))
    assert all(len(g["rollouts"]) == GROUP for g in call["groups"])
    assert [r.get("feedback") for g in call["groups"] for r in g["rollouts"]] == \
        ["The final answer is wrong.", None] * (len(sent) // 2)

    batch = recorded["loss"][0]
    advantages = batch["advantages"]
    assert advantages.shape == batch["completion_ids"].shape == batch["completion_mask"].shape
    token_level = False
    for i in range(len(advantages)):
        length = int(batch["completion_mask"][i].sum())
        k = key(batch["prompt_ids"][i], batch["prompt_mask"][i], batch["completion_ids"][i], length)
        candidates = service[k]
        assert len(candidates[0]) == length, "service row and completion differ in length"
        match = [j for j, c in enumerate(candidates) if torch.equal(advantages[i, :length], c)]
        assert match, f"loss row {i} is not the service's advantages"
        candidates.pop(match[0])
        assert torch.all(advantages[i, length:] == 0)
        token_level |= len(set(advantages[i, :length].tolist())) > 1
    print(f"per-token variation reached the loss: {token_level}; "
          f"gate rate {call['result'].stats.gate_rate:.3f}")

    # Step 1, anneal weight 0: the loss sees TRL's own GRPO advantage on every token (the
    # service computes it in float64, TRL in float32).
    assert client.calls[1]["result"].anneal_weight == 0.0
    assert_loss_rows_are_trls_grpo(recorded, 1, atol=1e-6)

    # Every 2nd step is saved for the viewer: step 0 only, whole, in the order sent.
    assert sorted(f.name for f in saved.iterdir()) == ["step-000000.jsonl"]
    lines = [json.loads(x) for x in (saved / "step-000000.jsonl").read_text().splitlines()]
    assert [line["input"] for line in lines] == call["groups"]
    assert [r["advantages"] for line in lines for r in line["rollouts"]] == call["result"].advantages()
    tok = trainer.processing_class
    for line in lines:
        # The service sends cig and log-probabilities where the teacher saw an accepted reflection.
        for r in line["rollouts"]:
            accepted = bool((r.get("reflection") or {}).get("accepted"))
            assert ("cig" in r and "teacher_logprobs" in r) == accepted, r
        assert line["pieces"] == [[tok.decode([t]) for t in r["token_ids"]] for r in line["input"]["rollouts"]]
    assert [c["returns"] for c in client.calls] == [VIEW_RETURNS, None]  # an unsaved step asks for none
    view = build([read_batch(saved / "step-000000.jsonl")])
    assert view["batches"][0]["summary"]["gated_tokens"] == call["result"].stats.gated_tokens

    logged = [entry for entry in trainer.state.log_history if "amr/gate_rate" in entry]
    assert len(logged) == 2 and all(0 <= e["amr/gate_rate"] <= 1 for e in logged)
    for branch in ("positive", "negative"):
        assert all(0 <= e[f"amr/gate_rate_{branch}"] <= 1 for e in logged)
    assert all(-5 <= e["amr/cig_p05_negative"] <= 5 for e in logged)
    assert {"amr/acceptance_rate", "amr/mean_abs_advantage", "amr/mean_abs_base_advantage"} <= set(logged[0])


def unreachable_client() -> AMRClient:
    with socket.socket() as s:  # a port that nothing listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return AMRClient(f"http://127.0.0.1:{port}", max_retries=0)


def test_unreachable_service_raises_by_default(model_path, tmp_path, recorded):
    trainer = make_trainer(model_path, tmp_path, unreachable_client(), max_steps=1)
    with pytest.raises(APIConnectionError):
        trainer.train()
    assert recorded["loss"] == []  # no step trained on advantages the service did not produce


def test_fallback_trains_on_trl_advantages_with_a_warning_and_a_metric(model_path, tmp_path, recorded,
                                                                       caplog):
    trainer = make_trainer(model_path, tmp_path, unreachable_client(), max_steps=1,
                           amr_fallback_to_grpo=True)
    with caplog.at_level(logging.WARNING, logger="amr_client.integrations.trl"):
        trainer.train()
    assert "amr-sd unreachable" in caplog.text
    assert trainer.state.log_history[0]["amr/fallback"] == 1.0
    assert_loss_rows_are_trls_grpo(recorded, 0, atol=0.0)


def test_full_weight_sync_scores_each_step_with_the_weights_being_trained(policy_server, model_path,
                                                                           tmp_path):
    from safetensors.torch import load_file

    client = RecordingClient(policy_server.base_url, api_key=policy_server.api_key)
    trainer = make_trainer(model_path, tmp_path, client, max_steps=3, learning_rate=1e-4,
                           amr_config=AMR_CONFIG, amr_policy_sync="full", amr_policy_sync_steps=2,
                           amr_policy_dir=policy_server.root / "trl-full", amr_policy_label="trl",
                           amr_policy_keep=1)
    trainer.train()

    # Pushed at step 0 and step 2; step 1 is scored with the step-0 weights, and says so.
    assert [c["policy"] for c in client.calls] == [{"version": "trl-step-0"}] * 2 + [{"version": "trl-step-2"}]
    assert [c["result"].policy_version for c in client.calls] == ["trl-step-0", "trl-step-0", "trl-step-2"]
    status = client.get_policy()
    assert status.version == "trl-step-2" and status.path.endswith("trl-full/trl-step-2")
    assert sorted(p.name for p in (policy_server.root / "trl-full").iterdir()) == ["trl-step-2"]
    # What the service loaded is what the trainer had after two optimizer steps, not the base.
    pushed = load_file(str(policy_server.root / "trl-full" / "trl-step-2" / "model.safetensors"))
    base = load_file(str(policy_server.folders["original"] / "model.safetensors"))
    assert pushed.keys() == base.keys()
    assert any(not torch.equal(pushed[k].float(), base[k].float()) for k in base)
    logged = [e for e in trainer.state.log_history if "amr/policy_step" in e]
    assert [e["amr/policy_step"] for e in logged] == [0.0, 0.0, 2.0]


def test_lora_sync_names_the_trainers_adapter_in_every_request(policy_server, model_path, tmp_path):
    from peft import LoraConfig

    client = RecordingClient(policy_server.base_url, api_key=policy_server.api_key)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(model_path, tmp_path, client, max_steps=2, peft_config=lora,
                           amr_config=AMR_CONFIG, amr_policy_sync="lora",
                           amr_policy_dir=policy_server.root / "trl-lora", amr_policy_label="trl-lora")
    trainer.train()

    folder = str((policy_server.root / "trl-lora").resolve())
    assert [c["policy"] for c in client.calls] == [
        {"lora_path": f"{folder}/trl-lora-step-{k}", "version": f"trl-lora-step-{k}"} for k in (0, 1)]
    assert [c["result"].adapter for c in client.calls] == ["trl-lora-step-0", "trl-lora-step-1"]
    assert {"trl-lora-step-0", "trl-lora-step-1"} <= set(client.get_policy().adapters_loaded)


def test_policy_sync_settings_are_checked_at_construction(model_path, tmp_path):
    client = AMRClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="needs a PEFT model"):
        make_trainer(model_path, tmp_path, client, max_steps=1, amr_policy_sync="lora",
                     amr_policy_dir=tmp_path)
    with pytest.raises(ValueError, match="needs amr_policy_dir"):
        make_trainer(model_path, tmp_path, client, max_steps=1, amr_policy_sync="full")
    with pytest.raises(ValueError, match="amr_save_steps is set but amr_save_dir is not"):
        make_trainer(model_path, tmp_path, client, max_steps=1, amr_save_steps=5)
    with pytest.raises(ValueError, match="amr_save_steps must be >= 0"):
        make_trainer(model_path, tmp_path, client, max_steps=1, amr_save_steps=-1, amr_save_dir=tmp_path)
    with pytest.raises(ValueError, match="'off', 'lora' or 'full'"):
        make_trainer(model_path, tmp_path, client, max_steps=1, amr_policy_sync="weights",
                     amr_policy_dir=tmp_path)
