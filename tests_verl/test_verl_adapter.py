"""The verl adapter against verl 0.9.1's real DataProto, registries and compute_advantage, and a
real amr-sd server (AMR_URL, see conftest.py).

The batch is built the way verl builds it: RLHFDataset rows (`verl/utils/dataset/rl_dataset.py`:
raw_prompt, data_source, reward_model) through verl's `collate_fn` and
`DataProto.from_single_dict`, a uid per prompt and `repeat(rollout.n, interleave=True)`
(`verl/trainer/ppo/ray_trainer.py::RayPPOTrainer.fit`), then the agent loop's layout
(`verl/experimental/agent_loop/agent_loop.py::_agent_loop_postprocess`): prompts left-padded to
prompt_length, responses right-padded to response_length, attention_mask = [prompt | response].
Two prompts x four short rollouts keep the one real scoring call to seconds on a CPU server.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.trainer.config.algorithm import AlgoConfig
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.dataset.rl_dataset import collate_fn
from verl.workers.reward_manager import get_reward_manager_cls

from amr_client import AMRClient, APIConnectionError
from amr_client.integrations.policy import BaseTeacherWarning
from amr_client.integrations.verl import AMRRewardManager, compute_amr_sd_advantage

ROLLOUT_N = 4
PROMPT_LENGTH = 96
RESPONSE_LENGTH = 64
# Short reflections and no retries keep the service's engine work to seconds; with τ = 0 every
# token an accepted reflection moves the right way gets credit, so Â varies along those rows.
FAST = {"max_reflection_tokens": 64, "max_retries": 0, "tau_pos": 0.0, "tau_neg": 0.0,
        # The recorded groups were chosen for v1: one greedy v1 reflection in each passes the filter.
        "reflection_template": "v1"}

# Two recorded groups of the embedded model on reasoning-gym chain_sum ("8 - 7 =" and "7 + 4 ="),
# with their verifier's rewards and feedback. Their responses are short, and one greedy reflection
# in each passes the leak filter, so the service returns per-token (not constant) advantages.
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data" / "groups.jsonl"
EXAMPLE_LINES = (31, 28)


def example_groups() -> list[dict]:
    lines = EXAMPLES.read_text().splitlines()
    return [json.loads(lines[i]) for i in EXAMPLE_LINES]


def recorded_verifier(tokenizer, feedback: bool = False):
    """A batched verifier with BatchRewardManager's signature that returns each example
    response's recorded verdict (and, with `feedback`, its feedback text), looked up by the text
    verify() decodes. Feedback changes what the critique writer sees, hence its reflections."""
    verdicts = {tokenizer.decode(r["token_ids"], skip_special_tokens=True): r
                for g in example_groups() for r in g["rollouts"]}

    def compute_score(data_sources, solution_strs, ground_truths, extra_infos, **kwargs):
        return [{"score": verdicts[s]["reward"], "feedback": verdicts[s].get("feedback") if feedback else None}
                for s in solution_strs]

    return compute_score


def _pad(tokenizer, ids: list[int], length: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The agent loop's _pad_token_ids: tokenizer.pad with the given side, one row at a time.
    tokenizer.padding_side = side
    padded = tokenizer.pad({"input_ids": ids}, padding="max_length", max_length=length,
                           return_tensors="pt", return_attention_mask=True)
    return padded["input_ids"].reshape(1, -1), padded["attention_mask"].reshape(1, -1)


def rolled_out_batch(tokenizer, step: int = 0) -> DataProto:
    """The batch RayPPOTrainer.fit holds after `batch.union(gen_batch_output)`, rows A A A A B B B B."""
    groups = example_groups()
    rows = [{"raw_prompt": g["prompt"]["messages"], "data_source": "chain_sum",
             "reward_model": {"style": "rule", "ground_truth": g["reference"]["answer"]},
             "extra_info": {"index": i}, "dummy_tensor": torch.tensor([0], dtype=torch.uint8)}
            for i, g in enumerate(groups)]
    batch = DataProto.from_single_dict(collate_fn(rows))
    batch.non_tensor_batch["uid"] = collate_fn([{"uid": str(uuid.uuid4())} for _ in groups])["uid"]
    batch = batch.repeat(repeat_times=ROLLOUT_N, interleave=True)

    prompts, responses, prompt_masks, response_masks = [], [], [], []
    for group in groups:
        # The agent loop renders raw_prompt with the chat template to get the ids it generates from.
        prompt_ids = tokenizer.apply_chat_template(group["prompt"]["messages"],
                                                   add_generation_prompt=True, tokenize=True,
                                                   return_dict=False)
        for rollout in group["rollouts"]:
            ids, mask = _pad(tokenizer, prompt_ids, PROMPT_LENGTH, "left")
            prompts.append(ids), prompt_masks.append(mask)
            ids, mask = _pad(tokenizer, rollout["token_ids"], RESPONSE_LENGTH, "right")
            responses.append(ids), response_masks.append(mask)
    prompts, responses = torch.cat(prompts), torch.cat(responses)
    attention_mask = torch.cat([torch.cat(prompt_masks), torch.cat(response_masks)], dim=1)
    gen_output = DataProto.from_dict(tensors={
        "prompts": prompts, "responses": responses, "response_mask": torch.cat(response_masks),
        "input_ids": torch.cat([prompts, responses], dim=1), "attention_mask": attention_mask})
    batch = batch.union(gen_output)
    batch.meta_info["global_steps"] = step
    return batch


def new_manager(url: str, tokenizer, feedback: bool = False, **kwargs) -> AMRRewardManager:
    # Looked up by name, as a verl config names it.
    manager_cls = get_reward_manager_cls("amr_sd")
    return manager_cls(tokenizer, num_examine=0, compute_score=recorded_verifier(tokenizer, feedback),
                       amr_url=url, **{"rollout_n": ROLLOUT_N, **kwargs})


def record_calls(manager: AMRRewardManager) -> list[SimpleNamespace]:
    """Wrap the real client's score() to keep what was sent and what came back."""
    calls, score = [], manager.client.score

    def recording_score(groups, **kwargs):
        result = score(groups, **kwargs)
        calls.append(SimpleNamespace(groups=groups, kwargs=kwargs, result=result))
        return result

    manager.client.score = recording_score
    return calls


def advantages_through_verl(batch: DataProto, reward_tensor: torch.Tensor) -> DataProto:
    """What RayPPOTrainer.fit does from the reward tensor on, with use_kl_in_reward=False."""
    batch.batch["token_level_scores"] = reward_tensor
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
    config = AlgoConfig(adv_estimator="amr_sd", use_kl_in_reward=False)
    return compute_advantage(batch, adv_estimator=config.adv_estimator, num_repeat=ROLLOUT_N,
                             config=config)


@pytest.fixture(scope="module")
def scored(amr_url, tokenizer) -> SimpleNamespace:
    """One real scoring call at step 0 on a batch whose rows are interleaved A B A B ...,
    as RayPPOTrainer._balance_batch may reorder them (`batch.reorder`)."""
    batch = rolled_out_batch(tokenizer)
    batch.reorder(torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]))
    manager = new_manager(amr_url, tokenizer, amr_config=FAST)
    calls = record_calls(manager)
    out = manager(batch, return_dict=True)
    batch = advantages_through_verl(batch, out["reward_tensor"])
    return SimpleNamespace(batch=batch, out=out, calls=calls)


def test_amr_sd_resolves_through_verls_own_registries():
    assert get_reward_manager_cls("amr_sd") is AMRRewardManager
    assert get_adv_estimator_fn("amr_sd") is compute_amr_sd_advantage


def test_advantages_have_the_shape_of_responses(scored):
    assert scored.batch.batch["advantages"].shape == scored.batch.batch["responses"].shape
    assert scored.batch.batch["advantages"].dtype == torch.float32


def test_advantages_equal_the_services_on_valid_tokens_and_zero_on_padding(scored):
    (call,) = scored.calls
    uids = scored.batch.non_tensor_batch["uid"]
    valid = scored.batch.batch["attention_mask"][:, PROMPT_LENGTH:].sum(-1).tolist()
    rows_of = {uid: [r for r in range(len(uids)) if uids[r] == uid] for uid in dict.fromkeys(uids)}
    service_rows = {row: rollout.advantages for rows, group in zip(rows_of.values(), call.result.groups)
                    for row, rollout in zip(rows, group.rollouts, strict=True)}
    advantages = scored.batch.batch["advantages"]
    for row, expected in service_rows.items():
        assert torch.equal(advantages[row, :valid[row]], torch.tensor(expected, dtype=torch.float32))
        assert not advantages[row, valid[row]:].any()
    # The returns verl stores beside them are the same tensor (no critic).
    assert torch.equal(scored.batch.batch["returns"], advantages)


def test_accepted_reflections_give_rows_per_token_credit_not_one_value(scored):
    # What makes the equality above a real check: a broadcast A_i would be constant along a row.
    valid = scored.batch.batch["attention_mask"][:, PROMPT_LENGTH:].bool()
    advantages = scored.batch.batch["advantages"]
    varying = [row for row in range(len(valid)) if advantages[row][valid[row]].unique().numel() > 1]
    assert varying, f"no row varies; the service stats were {scored.calls[0].result.stats}"


def test_interleaved_rows_are_sent_as_whole_uid_groups_in_one_call(scored):
    (call,) = scored.calls
    assert call.kwargs["step"] == 0
    assert call.kwargs["config"] == FAST
    sent = [[rollout["token_ids"] for rollout in group["rollouts"]] for group in call.groups]
    batch = scored.batch
    responses, mask = batch.batch["responses"], batch.batch["attention_mask"][:, PROMPT_LENGTH:]
    # Rows 0 2 4 6 hold prompt A's rollouts in order, rows 1 3 5 7 prompt B's (see the fixture).
    for group, rows in zip(sent, ([0, 2, 4, 6], [1, 3, 5, 7]), strict=True):
        assert group == [responses[r][mask[r].bool()].tolist() for r in rows]
    prompt_mask = batch.batch["attention_mask"][:, :PROMPT_LENGTH].bool()
    assert call.groups[0]["prompt"]["prompt_token_ids"] == batch.batch["prompts"][0][prompt_mask[0]].tolist()
    assert call.groups[0]["prompt"]["messages"] == example_groups()[0]["prompt"]["messages"]
    assert [r["reward"] for g in call.groups for r in g["rollouts"]] == [1, 0, 0, 1, 0, 0, 0, 1]
    assert call.groups[1]["reference"] == {"answer": "11"}


def test_amr_stats_come_back_as_metrics_and_per_row_base_advantages(scored):
    metrics, call = scored.out["metrics"], scored.calls[0]
    assert metrics["amr_sd/gate_rate"] == call.result.stats.gate_rate
    assert metrics["amr_sd/gate_rate_negative"] == call.result.stats.negative.gate_rate
    assert metrics["amr_sd/cig_p95_positive"] == call.result.stats.positive.cig_p95
    assert metrics["amr_sd/mean_abs_advantage"] == call.result.stats.mean_abs_advantage
    assert metrics["amr_sd/fallback"] == 0.0
    # GRPO over rewards 1 0 0 1: mean 0.5, unbiased std sqrt(1/3), so A = ±0.5·sqrt(3) = ±0.866.
    assert scored.out["reward_extra_info"]["amr_base_advantage"][0] == pytest.approx(0.8660, abs=1e-4)
    assert len(scored.out["reward_extra_info"]["score"]) == 2 * ROLLOUT_N


def test_feedback_in_a_dict_score_reaches_the_service(amr_url, tokenizer):
    # Step 50 is past the anneal, so this call does no engine work.
    manager = new_manager(amr_url, tokenizer, feedback=True, amr_config=FAST)
    calls = record_calls(manager)
    manager(rolled_out_batch(tokenizer, step=50))
    sent = calls[0].groups[0]["rollouts"]
    assert [r.get("feedback") for r in sent] == [
        None, "The final answer 5 is incorrect.", "The final answer 4 is incorrect.", None]


def test_fully_annealed_step_equals_verls_own_grpo(amr_url, tokenizer):
    # decay_steps=50 and step 50: anneal weight 0, so Â = A_i on every token (no engine work).
    batch = rolled_out_batch(tokenizer, step=50)
    out = new_manager(amr_url, tokenizer, amr_config={**FAST, "decay_steps": 50})(batch, return_dict=True)
    ours = advantages_through_verl(batch, out["reward_tensor"]).batch["advantages"]

    # verl's GRPO on the scalar rewards, placed on the last valid token as the reward loop does.
    grpo_batch = rolled_out_batch(tokenizer, step=50)
    rewards = [r["reward"] for g in example_groups() for r in g["rollouts"]]
    grpo_batch.batch["token_level_rewards"] = RewardManagerBase.assemble_rm_scores(grpo_batch, rewards)
    theirs = compute_advantage(grpo_batch, adv_estimator="grpo", norm_adv_by_std_in_grpo=True,
                               config=AlgoConfig(adv_estimator="grpo")).batch["advantages"]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert out["metrics"]["amr_sd/anneal_weight"] == 0.0


@pytest.mark.parametrize("missing, names", [
    ("raw_prompt", "data.return_raw_chat=True"),
    ("uid", "non_tensor_batch['uid']"),
    ("global_steps", "meta_info['global_steps']"),
])
def test_a_missing_input_names_the_setting_to_change(amr_url, tokenizer, missing, names):
    batch = rolled_out_batch(tokenizer)
    if missing == "global_steps":
        batch.meta_info.pop(missing)
    else:
        batch.non_tensor_batch.pop(missing)
    with pytest.raises(ValueError, match=re.escape(names)):
        new_manager(amr_url, tokenizer, amr_config=FAST)(batch)


def test_a_uid_naming_two_prompts_is_refused(amr_url, tokenizer):
    batch = rolled_out_batch(tokenizer)
    batch.non_tensor_batch["uid"][:] = batch.non_tensor_batch["uid"][0]
    with pytest.raises(ValueError, match="different prompts"):
        new_manager(amr_url, tokenizer, amr_config=FAST, rollout_n=2 * ROLLOUT_N)(batch)


def test_a_split_group_is_refused(amr_url, tokenizer):
    # The first six rows: prompt A's four rollouts and half of prompt B's, as a chunked batch.
    batch = rolled_out_batch(tokenizer).select_idxs(list(range(6)))
    with pytest.raises(ValueError, match="groups must be whole"):
        new_manager(amr_url, tokenizer, amr_config=FAST)(batch)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_every_nth_step_is_saved_for_the_viewer(amr_url, tokenizer, tmp_path):
    manager = new_manager(amr_url, tokenizer, amr_config=FAST, amr_save_dir=tmp_path, amr_save_steps=3)
    calls = record_calls(manager)
    for step in (3, 4):
        out = manager(rolled_out_batch(tokenizer, step=step), return_dict=True)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["step-000003.jsonl"]
    saved, unsaved = calls
    assert saved.kwargs["returns"] == {"cig": True, "logprobs": True, "reflections": True}
    assert unsaved.kwargs["returns"] is None
    lines = [json.loads(x) for x in (tmp_path / "step-000003.jsonl").read_text().splitlines()]
    assert [line["input"] for line in lines] == saved.groups and lines[0]["step"] == 3
    assert [r["advantages"] for line in lines for r in line["rollouts"]] == saved.result.advantages()
    # The service sends cig and log-probabilities where the teacher saw an accepted reflection.
    for r in (r for line in lines for r in line["rollouts"]):
        accepted = bool((r.get("reflection") or {}).get("accepted"))
        assert ("cig" in r and "student_logprobs" in r) == accepted, r
    for line in lines:
        assert line["pieces"] == [[tokenizer.decode([t]) for t in r["token_ids"]] for r in line["input"]["rollouts"]]
    assert out["metrics"]["amr_sd/fallback"] == 0.0


def test_saving_settings_are_checked_at_construction(tokenizer):
    with pytest.raises(ValueError, match="amr_save_steps is set but amr_save_dir is not"):
        new_manager("http://127.0.0.1:9", tokenizer, amr_save_steps=2)
    with pytest.raises(ValueError, match="amr_save_steps must be >= 0"):
        new_manager("http://127.0.0.1:9", tokenizer, amr_save_steps=-2, amr_save_dir="x")


def test_a_service_failure_propagates_by_default(tokenizer):
    manager = new_manager(_closed_port_url(), tokenizer)
    manager.client = manager.client.with_options(max_retries=0)
    with pytest.raises(APIConnectionError):
        manager(rolled_out_batch(tokenizer))


def test_fallback_to_grpo_writes_verls_grpo_and_warns(tokenizer, caplog):
    manager = new_manager(_closed_port_url(), tokenizer, fallback_to_grpo=True)
    manager.client = manager.client.with_options(max_retries=0)
    batch = rolled_out_batch(tokenizer)
    with caplog.at_level(logging.WARNING):
        out = manager(batch, return_dict=True)
    assert "fallback_to_grpo=True" in caplog.text
    assert out["metrics"]["amr_sd/fallback"] == 1.0
    advantages = advantages_through_verl(batch, out["reward_tensor"]).batch["advantages"]
    # Rewards 1 0 0 1 in prompt A's group: A = ±0.866 on every valid token of each row.
    valid = batch.batch["attention_mask"][:, PROMPT_LENGTH:].bool()
    assert advantages[0][valid[0]].tolist() == pytest.approx([0.8660] * int(valid[0].sum()), abs=1e-4)
    assert advantages[1][valid[1]].tolist() == pytest.approx([-0.8660] * int(valid[1].sum()), abs=1e-4)


def test_the_estimator_refuses_kl_in_reward():
    rewards, mask = torch.ones(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="use_kl_in_reward=False"):
        compute_amr_sd_advantage(rewards, mask, config=AlgoConfig(adv_estimator="amr_sd", use_kl_in_reward=True))


# ------------------------------------------------------------------------------------------------
# The policy that scores each step (a second server: LoRA on, a policy root; see conftest.py)
# ------------------------------------------------------------------------------------------------


def test_lora_policy_sync_scores_each_step_with_the_adapter_that_sampled_it(policy_service, tokenizer):
    # verl saves <default_local_dir>/global_step_N/actor/lora_adapter after step N, so step N's
    # rollouts come from global_step_{N-1} and step 1's from the base weights. Two saved steps
    # hold the test's rank-8 adapter, as a run saving every step would leave them.
    run = f"verl-{uuid.uuid4().hex[:8]}"
    for saved in (1, 2):
        shutil.copytree(policy_service.root / "lora",
                        policy_service.root / run / f"global_step_{saved}" / "actor" / "lora_adapter")

    def adapter_of(step):
        return f"{run}/global_step_{step - 1}/actor/lora_adapter" if step > 1 else None

    manager = new_manager(policy_service.url, tokenizer, amr_api_key=policy_service.api_key, amr_config=FAST,
                          amr_policy_sync="lora", amr_policy_path=adapter_of, amr_policy_label=run)
    calls = record_calls(manager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [manager(rolled_out_batch(tokenizer, step=step), return_dict=True) for step in (1, 2, 3)]

    assert [c.kwargs["policy"] for c in calls] == [None] + [
        {"lora_path": adapter_of(step), "version": f"{run}-step-{step}"} for step in (2, 3)]
    # The service's answer names what scored each step: the base weights, then each adapter.
    assert [c.result.adapter for c in calls] == [None, f"{run}-step-2", f"{run}-step-3"]
    with AMRClient(policy_service.url, api_key=policy_service.api_key) as client:
        status = client.get_policy()
    assert {c.result.policy_version for c in calls} == {status.version}  # adapters leave the full weights
    assert {f"{run}-step-2", f"{run}-step-3"} <= set(status.adapters_loaded)
    assert ["amr_sd/policy_step" in out["metrics"] for out in outs] == [False, True, True]
    assert outs[2]["metrics"]["amr_sd/policy_step"] == 3.0
    assert not [w for w in caught if issubclass(w.category, BaseTeacherWarning)]


def test_a_manager_without_a_policy_warns_once_that_the_teacher_is_the_base_model(amr_url, tokenizer):
    manager = new_manager(amr_url, tokenizer, amr_config={**FAST, "decay_steps": 50})
    calls = record_calls(manager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (50, 51):  # past the anneal: no engine work
            manager(rolled_out_batch(tokenizer, step=step))
    (warning,) = [w for w in caught if issubclass(w.category, BaseTeacherWarning)]
    assert "the teacher is the base model" in str(warning.message)
    assert [c.kwargs["policy"] for c in calls] == [None, None]
    assert [c.result.adapter for c in calls] == [None, None]


def test_policy_settings_are_checked_at_construction(tokenizer):
    with pytest.raises(ValueError, match="needs amr_policy_path"):
        new_manager("http://127.0.0.1:9", tokenizer, amr_policy_sync="lora")
    with pytest.raises(ValueError, match="amr_policy_sync must be 'off', 'lora' or 'full'"):
        new_manager("http://127.0.0.1:9", tokenizer, amr_policy_sync="weights", amr_policy_path="p")
