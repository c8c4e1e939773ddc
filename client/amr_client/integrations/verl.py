"""verl adapter (written against verl 0.9.1): AMR-SD advantages as dense per-token verl rewards.

Importing this module registers two things under the name "amr_sd":

- `AMRRewardManager`, a batch-level reward manager (`verl.workers.reward_manager.register`). It
  scores every row with your verifier, sends each `uid` group whole to the amr-sd service in one
  call, and returns a (bs, response_length) float32 tensor holding Â_i,t on valid response tokens
  and 0 on padding.
- `compute_amr_sd_advantage`, a pass-through advantage estimator (`@register_adv_est("amr_sd")`):
  advantages = token_level_rewards * response_mask.

    algorithm.adv_estimator=amr_sd        # the pass-through below, never grpo
    algorithm.use_kl_in_reward=False      # the rewards already are advantages
    algorithm.norm_adv_by_std_in_grpo=... # pass amr_config={"norm_by_std": <same>} to the manager

    from amr_client.integrations.verl import AMRRewardManager   # registers both
    from verl.workers.reward_manager import get_reward_manager_cls
    manager = get_reward_manager_cls("amr_sd")(
        tokenizer, num_examine=0, compute_score=my_batched_score,  # BatchRewardManager's contract
        amr_url="http://scorer:8000", rollout_n=config.actor_rollout_ref.rollout.n)
    batch.meta_info["global_steps"] = trainer.global_steps
    out = manager(batch, return_dict=True)  # batch: the rolled-out batch, all groups, with uid
    batch.batch["rm_scores"] = out["reward_tensor"]   # what verl's extract_reward reads
    metrics.update(out["metrics"])                     # amr_sd/gate_rate, ...

The teacher must be the policy being trained (docs/method.md): save each step's LoRA adapter (or
full checkpoint) into the service's AMR_POLICY_ROOT and name it, as the TRL adapter does:
`amr_policy_sync="lora", amr_policy_path=<the folder of the adapter that sampled step N>`, a string
with `{step}` or a function of the step (docs/integrations.md shows one for verl's own checkpoints);
"full" reloads the service with `set_policy` instead. Without it, the first call warns that the
teacher is the base model.

Why the legacy batch registry, and why the call is yours to place (verl 0.9.1 source):

- `verl/trainer/ppo/reward.py::load_reward_manager` and `experimental/reward_loop/reward_loop.py`
  load managers only from the reward-loop registry
  (`verl/experimental/reward_loop/reward_manager/registry.py`), whose `RewardManagerBase.run_single`
  scores ONE sample: `RewardLoopWorker.compute_score_batch` splits its chunk into `data[i:i+1]`,
  `RewardLoopManager.compute_rm_score` chunks the batch over `reward.num_workers` workers, and the
  agent loop (`experimental/agent_loop/agent_loop.py::_compute_score`) sends each trajectory to a
  random worker. A group can be split; no reward-loop manager can write GRPO-relative values.
- `verl/workers/reward_manager/` (`AbstractRewardManager.__call__(data)`, e.g. `batch.py`) is the
  interface that receives a whole batch, so this manager implements it and reuses
  `BatchRewardManager.verify`. No 0.9.1 trainer calls that registry any more, so the manager is
  called where the batch is whole: after rollout, before `extract_reward` reads `rm_scores`
  (`verl/trainer/ppo/ray_trainer.py::RayPPOTrainer.fit`).
- The advantage estimator sees only token_level_rewards, response_mask, index (uid) and config
  (`ray_trainer.py::compute_advantage`), not token ids or prompts, so it cannot call the service.

verl's built-in GRPO (`core_algos.py::compute_grpo_outcome_advantage`) must not be used with these
rewards: it sums each row's per-token rewards into one scalar and re-normalises it per group,
which destroys the per-token credit. The pass-through estimator hands Â to the policy loss as is.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, register_adv_est
from verl.workers.reward_manager import BatchRewardManager, register

from amr_client import AMRClient, APIConnectionError, ScoringConfig, ServiceUnavailableError
from amr_client.integrations.options import renamed, scoring_client
from amr_client.integrations.policy import PolicySync
from amr_client.saved import StepSaver

__all__ = ["AMRRewardManager", "compute_amr_sd_advantage"]

logger = logging.getLogger(__name__)


@register("amr_sd")
class AMRRewardManager(BatchRewardManager):
    """Batch reward manager writing AMR-SD advantages Â_i,t as dense per-token rewards.

    Args (beyond `BatchRewardManager`'s tokenizer, num_examine, compute_score, reward_fn_key;
    other keyword arguments go to `compute_score`, as there):
        amr_url: the amr-sd service, e.g. "http://scorer:8000", or a list of replicas, each
            batch then spread over them (`amr_client.ReplicaClient`).
        amr_api_key: sent as a bearer token when set.
        amr_client: an `AMRClient` to score with instead of `amr_url` / `amr_api_key` /
            `amr_timeout_s` (the TRL trainer's option of the same name).
        amr_config: `ScoringConfig` overrides sent with every call, e.g. {"norm_by_std": False}
            when `algorithm.norm_adv_by_std_in_grpo=False`.
        amr_timeout_s: read timeout of one scoring call (a large batch on CPU takes minutes).
        rollout_n: `actor_rollout_ref.rollout.n`; when set, every uid must have exactly this
            many rows, which also catches a batch cut into equal pieces.
        amr_fallback_to_grpo: when the service is unreachable after the client's retries
            (connection errors, timeouts, 503), log a warning and write plain GRPO advantages
            (verl's own, broadcast over the response) instead of raising. A 4xx still raises.
            Off by default: a silent fallback would train another algorithm than the configured one.
            `fallback_to_grpo=` is its deprecated name.
        amr_save_dir: where scored batches are saved for `amr-sd view` (`step-<N>.jsonl`, with
            the groups sent, per-token CIG, log-probabilities and token texts).
        amr_save_steps: save every N-th step's batch, starting at the first; 0 (default) saves
            none. A saved step asks the service for those per-token arrays too.
        amr_policy_sync: "off" (default), "lora" or "full", as in the TRL adapter: the policy
            that scores each step (`amr_client.integrations.policy.PolicySync`). "lora" names
            the step's adapter folder in every request; "full" reloads the service with the
            step's checkpoint (`set_policy`) and then requires that version. "off" scores with
            the service's starting weights and warns once (`BaseTeacherWarning`).
        amr_policy_path: the folder holding the weights that sampled step N's rollouts, as the
            service names it (inside its AMR_POLICY_ROOT): "dir/step-{step}" or a function of
            the step (None while nothing is saved yet: the step is scored with
            the service's current weights). Your run writes it before the manager scores that step.
        amr_policy_sync_steps: push every N steps, starting at the first scored step.
        amr_policy_label: prefix of the version labels, "<label>-step-<N>" (default: a random run id).

    `compute_score` follows `BatchRewardManager`: a batched function returning one float or
    one dict with "score" per row; a dict's "feedback" string is shown to the critique writer.
    """

    def __init__(self, tokenizer, num_examine, compute_score, reward_fn_key="data_source", *,
                 amr_url: str | list[str] | None = None, amr_api_key: str | None = None,
                 amr_client: AMRClient | None = None,
                 amr_config: ScoringConfig | dict[str, Any] | None = None,
                 amr_timeout_s: float = 600.0, rollout_n: int | None = None,
                 amr_fallback_to_grpo: bool = False, amr_save_dir: str | Path | None = None,
                 amr_save_steps: int = 0, fallback_to_grpo: bool | None = None,
                 amr_policy_sync: str = "off",
                 amr_policy_path: str | Callable[[int], str | None] | None = None,
                 amr_policy_sync_steps: int = 1, amr_policy_label: str | None = None,
                 **reward_kwargs):
        self.amr_saver = StepSaver(amr_save_dir, amr_save_steps)
        super().__init__(tokenizer, num_examine, compute_score, reward_fn_key, **reward_kwargs)
        self.amr_config = ScoringConfig.model_validate(amr_config or {})
        # Only the fields the user set travel, so the server's defaults apply to the rest.
        self._config_overrides = self.amr_config.model_dump(exclude_unset=True)
        self.rollout_n = rollout_n
        self.amr_fallback_to_grpo = renamed("amr_fallback_to_grpo", amr_fallback_to_grpo,
                                            "fallback_to_grpo", fallback_to_grpo, False)
        self.client = scoring_client(amr_client, amr_url, amr_api_key, amr_timeout_s)
        self.amr_policy = PolicySync(self.client, amr_policy_sync, path=amr_policy_path,
                                     sync_steps=amr_policy_sync_steps, label=amr_policy_label)

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        # A batch verl's config left incomplete is refused before the (possibly slow) verifier runs.
        _require_keys(data)
        step = _global_step(data)
        groups = _uid_groups(data, self.rollout_n)
        prompt_len = data.batch["prompts"].shape[-1]
        response_lengths = data.batch["attention_mask"][:, prompt_len:].sum(dim=-1).tolist()
        prompts = [_prompt(data, rows) for rows in groups.values()]

        rewards, feedback, reward_extra_info = self._verifier_scores(data)
        request = [_group(data, prompt, rows, response_lengths, rewards, feedback)
                   for prompt, rows in zip(prompts, groups.values(), strict=True)]
        try:
            policy = self.amr_policy.policy_for(step)
            result = self.client.score(request, step=step, config=self._config_overrides or None,
                                       policy=policy, returns=self.amr_saver.returns(step))
        except (APIConnectionError, ServiceUnavailableError) as exc:
            if not self.amr_fallback_to_grpo:
                raise
            logger.warning("amr-sd unreachable after retries at step %d (%s); writing plain GRPO advantages "
                           "because amr_fallback_to_grpo=True", step, exc)
            return self._grpo_fallback(data, rewards, response_lengths, reward_extra_info, return_dict)

        if self.amr_saver.wants(step):
            self.amr_saver.save(step, request, result, decode=self.tokenizer.decode)
        reward_tensor = torch.zeros_like(data.batch["responses"], dtype=torch.float32)
        base_advantage = np.zeros(len(data), dtype=np.float64)
        for rows, scored in zip(groups.values(), result.groups, strict=True):
            for row, rollout in zip(rows, scored.rollouts, strict=True):
                if len(rollout.advantages) != response_lengths[row]:
                    raise RuntimeError(f"amr-sd returned {len(rollout.advantages)} advantages for "
                                       f"row {row} with {response_lengths[row]} response tokens")
                reward_tensor[row, :response_lengths[row]] = torch.tensor(rollout.advantages)
                base_advantage[row] = rollout.base_advantage
        reward_extra_info["amr_base_advantage"] = base_advantage.tolist()

        stats = result.stats
        metrics = {
            "amr_sd/gate_rate": stats.gate_rate,
            "amr_sd/gate_rate_positive": stats.positive.gate_rate,
            "amr_sd/gate_rate_negative": stats.negative.gate_rate,
            "amr_sd/cig_p95_positive": stats.positive.cig_p95,
            "amr_sd/cig_p05_negative": stats.negative.cig_p05,
            "amr_sd/acceptance_rate": stats.acceptance_rate,
            "amr_sd/mean_abs_advantage": stats.mean_abs_advantage,
            "amr_sd/mean_abs_base_advantage": stats.mean_abs_base_advantage,
            "amr_sd/anneal_weight": result.anneal_weight,
            "amr_sd/reflections_generated": stats.reflections_generated,
            "amr_sd/fallback": 0.0,
        }
        metrics.update({f"amr_sd/{name}": value for name, value in self.amr_policy.metrics().items()})
        if return_dict:
            return {"reward_tensor": reward_tensor, "reward_extra_info": reward_extra_info,
                    "metrics": metrics}
        return reward_tensor

    def _verifier_scores(self, data: DataProto) -> tuple[list[float], list[str | None], dict]:
        reward_extra_info: dict[str, list] = defaultdict(list)
        rewards, feedback = [], []
        for score in self.verify(data):
            if isinstance(score, dict):
                for key, value in score.items():
                    reward_extra_info[key].append(value)
                rewards.append(float(score["score"]))
                feedback.append(score.get("feedback"))
            else:
                rewards.append(float(score))
                feedback.append(None)
        return rewards, feedback, reward_extra_info

    def _grpo_fallback(self, data: DataProto, rewards: list[float], response_lengths: list[int],
                       reward_extra_info: dict, return_dict: bool) -> torch.Tensor | dict[str, Any]:
        # verl's own GRPO on the scalar rewards, so the fallback is exactly `adv_estimator=grpo`.
        response_mask = data.batch["attention_mask"][:, data.batch["prompts"].shape[-1]:].float()
        scalar_rewards = torch.zeros_like(response_mask)  # (bs, response_length)
        for row, length in enumerate(response_lengths):
            scalar_rewards[row, length - 1] = rewards[row]
        advantages, _ = compute_grpo_outcome_advantage(
            scalar_rewards, response_mask, data.non_tensor_batch["uid"],
            epsilon=self.amr_config.std_eps, norm_adv_by_std_in_grpo=self.amr_config.norm_by_std)
        if not return_dict:
            return advantages
        reward_extra_info["amr_base_advantage"] = [
            advantages[row, length - 1].item() for row, length in enumerate(response_lengths)]
        metrics = {"amr_sd/fallback": 1.0}
        return {"reward_tensor": advantages, "reward_extra_info": reward_extra_info, "metrics": metrics}


@register_adv_est("amr_sd")
def compute_amr_sd_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                             config=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass-through: the rewards already are the AMR-SD advantages Â_i,t.

    Args:
        token_level_rewards: (bs, response_length), `AMRRewardManager`'s tensor.
        response_mask: (bs, response_length); 0 on padding and on tool-output tokens.
        config: verl's `AlgoConfig`; `index` (uid) and other keyword arguments verl passes
            (`ray_trainer.py::compute_advantage`) are not needed: the service did the grouping.

    Returns:
        advantages and returns, both (bs, response_length) and equal (no critic).
    """
    if config is not None and config.get("use_kl_in_reward", False):
        # apply_kl_penalty would subtract β·KL from Â itself, turning advantages into rewards again.
        raise ValueError("adv_estimator=amr_sd needs algorithm.use_kl_in_reward=False; use the "
                         "actor's KL loss (actor_rollout_ref.actor.use_kl_loss=True) instead")
    advantages = token_level_rewards * response_mask
    return advantages, advantages


def _require_keys(data: DataProto) -> None:
    for key, hint in (("uid", "verl's trainer adds it per prompt before repeating rollout.n times; "
                              "pass the batch after batch.union(gen_batch_output)"),
                      ("raw_prompt", "set data.return_raw_chat=True (verl < 0.9; 0.9's RLHFDataset "
                                     "always returns it) and keep it in the batch: the service "
                                     "renders the teacher prompt from these chat messages")):
        if key not in data.non_tensor_batch:
            raise ValueError(f"AMRRewardManager needs non_tensor_batch[{key!r}]: {hint}")


def _global_step(data: DataProto) -> int:
    step = data.meta_info.get("global_steps")
    if step is None:
        raise ValueError(
            "AMRRewardManager needs data.meta_info['global_steps'] (it drives the anneal schedule): "
            "verl's trainer sets it on the generation batch only (ray_trainer.py: "
            "gen_batch.meta_info['global_steps'] = self.global_steps); set "
            "batch.meta_info['global_steps'] = trainer.global_steps before calling the manager")
    return int(step)


def _uid_groups(data: DataProto, rollout_n: int | None) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = defaultdict(list)
    for row, uid in enumerate(data.non_tensor_batch["uid"]):
        groups[uid].append(row)
    sizes = {uid: len(rows) for uid, rows in groups.items()}
    expected = rollout_n if rollout_n is not None else max(sizes.values())
    short = {uid: n for uid, n in sizes.items() if n != expected}
    if short:
        raise ValueError(
            f"uid groups must be whole ({expected} rows each, actor_rollout_ref.rollout.n) but "
            f"{short} differ: the batch was split or filtered per row; call the manager on the "
            "whole rolled-out batch (GRPO-relative advantages need every rollout of a prompt)")
    return dict(groups)


def _prompt(data: DataProto, rows: list[int]) -> dict[str, Any]:
    """The wire prompt of one uid group, refusing a uid that names more than one prompt."""
    prompt_len = data.batch["prompts"].shape[-1]
    # Prompts are left-padded (agent_loop.py's _agent_loop_postprocess), so the prompt half of
    # attention_mask picks out exactly the ids the policy saw.
    prompt_mask = data.batch["attention_mask"][:, :prompt_len].bool()
    prompt_ids = [data.batch["prompts"][row][prompt_mask[row]].tolist() for row in rows]
    messages = [_messages(data.non_tensor_batch["raw_prompt"][row]) for row in rows]
    if any(ids != prompt_ids[0] for ids in prompt_ids) or any(m != messages[0] for m in messages):
        uid = data.non_tensor_batch["uid"][rows[0]]
        raise ValueError(f"uid {uid!r} holds rows {rows} with different prompts: a uid must name "
                         "one prompt and its rollout.n responses (verl sets uid before repeat)")
    return {"messages": messages[0], "prompt_token_ids": prompt_ids[0]}


def _group(data: DataProto, prompt: dict[str, Any], rows: list[int], response_lengths: list[int],
           rewards: list[float], feedback: list[str | None]) -> dict[str, Any]:
    """The wire group of one uid: its prompt and its rollouts in row order."""
    rollouts = []
    for row in rows:
        # Responses are right-padded: the first response_length ids are the sampled ones.
        rollout = {"token_ids": data.batch["responses"][row][:response_lengths[row]].tolist(),
                   "reward": rewards[row]}
        if feedback[row]:
            rollout["feedback"] = feedback[row]
        rollouts.append(rollout)
    group = {"prompt": prompt, "rollouts": rollouts}
    # The reference answer feeds only the service's leak filter (a hint must not reveal it).
    reward_model = data.non_tensor_batch.get("reward_model")
    answer = reward_model[rows[0]].get("ground_truth") if reward_model is not None else None
    if isinstance(answer, (str, int, float)):
        group["reference"] = {"answer": str(answer)}
    return group


def _messages(raw_prompt: Any) -> list[dict[str, str]]:
    # raw_prompt is RLHFDataset's chat list; the wire schema takes only role and content.
    return [{"role": m["role"], "content": m["content"]} for m in raw_prompt]
