"""TRL: `AMRGRPOTrainer`, a `trl.GRPOTrainer` whose loss sees AMR-SD per-token advantages.

    from amr_client import AMRClient
    from amr_client.integrations.trl import AMRGRPOTrainer

    trainer = AMRGRPOTrainer(
        model=model, reward_funcs=[accuracy], args=GRPOConfig(...), train_dataset=dataset,
        amr_client=AMRClient("http://127.0.0.1:8000", timeout=httpx.Timeout(600.0)),
        amr_config={"decay_steps": 50},          # any ScoringConfig field
    )
    trainer.train()

Tested with trl 1.16.0. How it plugs in (trl/trainer/grpo_trainer.py):

- `_calculate_rewards` is where TRL gathers the rewards of the whole generation batch, the
  batch whose consecutive `num_generations` rows form a group. The override keeps those rows'
  prompts, completion token ids and rewards (plus any `log_extra(feedback_column, ...)` a reward
  function wrote) for the next step.
- `_generate_and_score_completions` returns `advantages` of shape (B,) sliced per process. The
  override sends the gathered groups, whole, to the service in one `score` call from the main
  process, broadcasts the answer, and replaces `advantages` by a (B, T) tensor aligned with
  `completion_ids` (T = `completion_ids.size(1)`, right-padded with 0) before TRL shuffles and
  splits the batch. `_compute_loss` already accepts (B, T) advantages.

The service computes the base advantage exactly as TRL does (`std_eps=1e-4`, unbiased std,
`norm_by_std` from `scale_rewards`), so at anneal weight 0 the loss sees TRL's own advantages.
Evaluation batches keep TRL's advantages: AMR-SD shapes the training signal only.

Feedback: a reward function may pass verifier feedback per completion through TRL's own
`log_extra` hook, `log_extra("amr_feedback", texts)`; it reaches the critique writer and also
shows in TRL's completions table. A dataset column named by `amr_reference_column` becomes the
group's reference answer, which the leak filter keeps out of every reflection.

Policy sync: the service must score with the policy being trained. `amr_policy_sync="lora"`
(a PEFT model) saves the trainer's adapter every `amr_policy_sync_steps` steps into
`amr_policy_dir` and names it in every score request (`policy.lora_path` + a version label);
`"full"` saves the whole model there and loads it into the service (`POST /v1/policy`), then
requires that version in every request, so a service another run moved answers 409 instead of
scoring with foreign weights. `amr_policy_dir` must be inside the service's `AMR_POLICY_ROOT`
(a shared or the same disk); `amr_policy_service_dir` names it as the service sees it when that
differs. The last `amr_policy_keep` pushed folders are kept.

Failure policy: by default any error raises, so a batch is never trained on advantages the
service did not produce. With `amr_fallback_to_grpo=True`, a service that cannot be reached
after the client's own retries (connection errors, timeouts, 503) gives TRL's GRPO advantages
for that batch, a logged warning, and `amr/fallback` = 1 in the trainer's metrics. Errors that
mean the request is wrong (4xx) always raise.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object
from trl import GRPOTrainer

from amr_client import AMRClient, APIConnectionError, ScoringConfig, ServiceUnavailableError
from amr_client.integrations.policy import warn_base_teacher
from amr_client.saved import StepSaver

__all__ = ["AMRGRPOTrainer"]

logger = logging.getLogger(__name__)

# TRL's GRPO divides by (std + 1e-4) (grpo_trainer.py, `_generate_and_score_completions`).
TRL_STD_EPS = 1e-4
UNREACHABLE = (APIConnectionError, ServiceUnavailableError)


class AMRGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with AMR-SD advantages from an amr-sd service.

    Args (besides GRPOTrainer's own):
        amr_client: the `AMRClient` to score with. Give it a long read timeout: a cold batch
            writes reflections for every rollout of a mixed group.
        amr_config: `ScoringConfig` fields to override on the server (dict or model). The
            fields that define the base advantage are set to TRL's and may not be overridden.
        amr_fallback_to_grpo: train on TRL's GRPO advantages, with a warning, when the service
            is unreachable after the client's retries. Off: such a batch raises.
        amr_feedback_column: the `log_extra` column holding verifier feedback, if any.
        amr_reference_column: a dataset column with the reference answer, if any.
        amr_policy_sync: "off" (default), "lora" (push the PEFT adapter) or "full" (push the
            whole model) every `amr_policy_sync_steps` steps, starting at the first. "off"
            scores with the service's starting weights and warns once (`BaseTeacherWarning`).
        amr_policy_dir: where pushed checkpoints are written; inside the service's policy root.
        amr_policy_service_dir: the same folder as the service names it (default: amr_policy_dir).
        amr_policy_label: prefix of the version labels, "<label>-step-<N>" (default: a random run id).
        amr_policy_keep: pushed folders kept on disk (the newest).
        amr_save_dir: where scored batches are saved for `amr-sd view` (`step-<N>.jsonl`, with
            the groups sent, per-token CIG, log-probabilities and token texts).
        amr_save_steps: save every N-th step's batch, starting at the first; 0 (default) saves
            none. A saved step asks the service for those per-token arrays too.
    """

    def __init__(self, *args: Any, amr_client: AMRClient,
                 amr_config: ScoringConfig | Mapping[str, Any] | None = None,
                 amr_fallback_to_grpo: bool = False,
                 amr_feedback_column: str = "amr_feedback",
                 amr_reference_column: str | None = None,
                 amr_policy_sync: str = "off", amr_policy_sync_steps: int = 1,
                 amr_policy_dir: str | Path | None = None,
                 amr_policy_service_dir: str | None = None, amr_policy_label: str | None = None,
                 amr_policy_keep: int = 2, amr_save_dir: str | Path | None = None,
                 amr_save_steps: int = 0, **kwargs: Any):
        self.amr_saver = StepSaver(amr_save_dir, amr_save_steps)  # checked before the model loads
        super().__init__(*args, **kwargs)
        if self.args.scale_rewards not in ("group", "none"):
            raise ValueError(
                f"AMRGRPOTrainer needs scale_rewards='group' or 'none', got {self.args.scale_rewards!r}: "
                "the service normalises rewards within each group.")
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "AMRGRPOTrainer needs multi_objective_aggregation='sum_then_normalize': the service "
                "takes one scalar reward per completion.")
        self.amr_client = amr_client
        self.amr_config = _trl_matched_config(amr_config, norm_by_std=self.args.scale_rewards == "group")
        self.amr_fallback_to_grpo = amr_fallback_to_grpo
        self.amr_feedback_column = amr_feedback_column
        self.amr_reference_column = amr_reference_column
        self._amr_batch: dict[str, Any] | None = None
        self._amr_sync = _PolicySync.create(self, amr_policy_sync, amr_policy_sync_steps, amr_policy_dir,
                                            amr_policy_service_dir, amr_policy_label, amr_policy_keep)
        self._amr_base_warned = False

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Read before TRL flushes the pending log_extra columns into its completions table.
        feedback = self._pending_extra_logs.get(self.amr_feedback_column)
        self._amr_batch = {
            "prompts": prompts,
            "completion_ids": [list(map(int, ids)) for ids in completion_ids_list],
            "feedback": list(feedback) if feedback is not None else None,
            "references": ([str(x[self.amr_reference_column]) for x in inputs]
                           if self.amr_reference_column else None),
            "rewards_per_func": rewards_per_func,  # (N, F), already gathered over processes
        }
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        batch, self._amr_batch = self._amr_batch, None
        if not self.model.training or batch is None:
            return output
        output["advantages"] = self._amr_advantages(batch, output)
        return output

    # --- helpers -----------------------------------------------------------------------------

    def _amr_advantages(self, batch: dict[str, Any], output: dict[str, Any]) -> torch.Tensor:
        grpo = output["advantages"]  # (B,) this process's rows, TRL's own GRPO advantages
        completion_ids = output["completion_ids"]  # (B, T) right-padded
        prompt_ids = [ids[mask.bool()].tolist()
                      for ids, mask in zip(output["prompt_ids"], output["prompt_mask"], strict=True)]
        rows = {
            "prompts": gather_object(batch["prompts"]),
            "prompt_ids": gather_object(prompt_ids),
            "completion_ids": gather_object(batch["completion_ids"]),
            "feedback": gather_object(batch["feedback"]) if batch["feedback"] is not None else None,
            "references": gather_object(batch["references"]) if batch["references"] is not None else None,
        }
        weights = self.reward_weights.to(batch["rewards_per_func"].device)
        rewards = (batch["rewards_per_func"] * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(batch["rewards_per_func"]).all(dim=1)] = torch.nan  # unscorable, as TRL

        answer: list[Any] = [None]
        if self.accelerator.is_main_process:
            answer[0] = self._score_on_main(rows, rewards.tolist())
        answer = broadcast_object_list(answer)[0]
        if isinstance(answer, BaseException):  # raise on every process, so none hangs
            raise answer
        per_row, metrics = answer
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)

        start = self.accelerator.process_index * len(grpo)
        advantages = torch.zeros(completion_ids.shape, dtype=torch.float32, device=grpo.device)
        for i in range(len(grpo)):
            values = per_row[start + i]
            if values is None:  # fallback, or a group TRL could not score: TRL's own advantage
                advantages[i, :len(batch["completion_ids"][i])] = grpo[i]
            else:
                advantages[i, :len(values)] = torch.tensor(values, dtype=torch.float32)
        return advantages

    def _score_on_main(self, rows: dict[str, Any], rewards: list[float]):
        """Score every complete group; returns (per-row advantages or None, metrics) or the error."""
        size = self.num_generations
        groups, group_rows = [], []
        unscorable = 0
        for start in range(0, len(rewards), size):
            members = range(start, start + size)
            if any(r != r for r in (rewards[i] for i in members)):  # NaN: a reward fn returned None
                unscorable += 1
                continue
            groups.append(self._group(rows, rewards, members))
            group_rows.append(members)
        per_row: list[list[float] | None] = [None] * len(rewards)
        metrics = {"amr/unscored_groups": float(unscorable), "amr/fallback": 0.0}
        if not groups:
            return per_row, metrics
        started = time.perf_counter()
        step = self.state.global_step
        try:
            policy = None
            if self._amr_sync is not None:
                policy = self._amr_sync.policy_for(step, metrics)
            elif not self._amr_base_warned:
                self._amr_base_warned = True
                warn_base_teacher()
            result = self.amr_client.score(groups, step=step, config=self.amr_config, policy=policy,
                                           returns=self.amr_saver.returns(step))
        except UNREACHABLE as exc:
            if not self.amr_fallback_to_grpo:
                return exc
            logger.warning("amr-sd unreachable after retries (%s); step %d trains on GRPO advantages",
                           exc, self.state.global_step)
            metrics["amr/fallback"] = 1.0
            return per_row, metrics
        except Exception as exc:  # noqa: BLE001 - handed to every process, then raised
            return exc
        if self.amr_saver.wants(step):
            tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
            self.amr_saver.save(step, groups, result, decode=tokenizer.decode)
        scored = iter(result.advantages())
        for members in group_rows:
            for i in members:
                values = next(scored)
                if len(values) != len(rows["completion_ids"][i]):
                    return RuntimeError(f"amr-sd returned {len(values)} advantages for completion {i} "
                                        f"of {len(rows['completion_ids'][i])} tokens")
                per_row[i] = values
        stats = result.stats
        metrics.update({
            "amr/anneal_weight": result.anneal_weight,
            "amr/gate_rate": stats.gate_rate,
            "amr/gate_rate_positive": stats.positive.gate_rate,
            "amr/gate_rate_negative": stats.negative.gate_rate,
            "amr/cig_p95_positive": stats.positive.cig_p95,
            "amr/cig_p05_negative": stats.negative.cig_p05,
            "amr/acceptance_rate": stats.acceptance_rate,
            "amr/reflections_generated": float(stats.reflections_generated),
            "amr/reflections_cached": float(stats.reflections_cached),
            "amr/mean_abs_advantage": stats.mean_abs_advantage,
            "amr/mean_abs_base_advantage": stats.mean_abs_base_advantage,
            "amr/score_seconds": time.perf_counter() - started,
        })
        return per_row, metrics

    def _group(self, rows: dict[str, Any], rewards: list[float], members: range) -> dict[str, Any]:
        first = members[0]
        prompt = rows["prompts"][first]
        wire_prompt: dict[str, Any] = {"prompt_token_ids": rows["prompt_ids"][first]}
        if isinstance(prompt, str):
            wire_prompt["text"] = prompt
        else:
            wire_prompt["messages"] = [{"role": m["role"], "content": _text(m["content"])} for m in prompt]
        rollouts = []
        for i in members:
            rollout: dict[str, Any] = {"token_ids": rows["completion_ids"][i], "reward": rewards[i]}
            if rows["feedback"] is not None and rows["feedback"][i]:
                rollout["feedback"] = str(rows["feedback"][i])
            rollouts.append(rollout)
        group: dict[str, Any] = {"prompt": wire_prompt, "rollouts": rollouts}
        if rows["references"] is not None:
            group["reference"] = {"answer": rows["references"][first]}
        return group


class _PolicySync:
    """Pushes the trainer's weights to the service and names them in each score request."""

    def __init__(self, trainer: AMRGRPOTrainer, mode: str, every: int, local_dir: Path,
                 service_dir: str, label: str, keep: int):
        self.trainer, self.mode, self.every, self.keep = trainer, mode, every, keep
        self.local_dir, self.service_dir, self.label = local_dir, service_dir, label
        self.pushed_step: int | None = None
        self.policy: dict[str, str] | None = None
        self.folders: list[Path] = []

    @classmethod
    def create(cls, trainer, mode, every, local_dir, service_dir, label, keep) -> _PolicySync | None:
        if mode == "off":
            return None
        if mode not in ("lora", "full"):
            raise ValueError(f"amr_policy_sync must be 'off', 'lora' or 'full', got {mode!r}")
        if local_dir is None:
            raise ValueError("amr_policy_sync needs amr_policy_dir: a folder inside the service's "
                             "AMR_POLICY_ROOT that this trainer can write")
        if every < 1 or keep < 1:
            raise ValueError("amr_policy_sync_steps and amr_policy_keep must be >= 1")
        is_peft = hasattr(trainer.model, "peft_config")
        if mode == "lora" and not is_peft:
            raise ValueError("amr_policy_sync='lora' needs a PEFT model (pass peft_config=...); "
                             "use 'full' to push the whole model")
        if mode == "full" and is_peft:
            raise ValueError("amr_policy_sync='full' pushes the whole model; this one is a PEFT "
                             "model: use 'lora'")
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
            raise ValueError("amr_policy_sync saves the model from the main process and does not "
                             "gather sharded (DeepSpeed/FSDP) weights")
        local = Path(local_dir)
        return cls(trainer, mode, every, local, service_dir or str(local.resolve()),
                   label or f"run-{uuid.uuid4().hex[:8]}", keep)

    def policy_for(self, step: int, metrics: dict[str, float]) -> dict[str, str]:
        """The request's `policy`, after pushing the current weights when they are due."""
        if self.pushed_step is None or step - self.pushed_step >= self.every:
            started = time.perf_counter()
            self._push(step)
            metrics["amr/policy_push_seconds"] = time.perf_counter() - started
        metrics["amr/policy_step"] = float(self.pushed_step)
        return self.policy

    def _push(self, step: int) -> None:
        version = f"{self.label}-step-{step}"
        folder = self.local_dir / version
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        model.save_pretrained(str(folder), safe_serialization=True)  # LoRA: the adapter only
        service_path = f"{self.service_dir.rstrip('/')}/{version}"
        if self.mode == "full":
            self.trainer.amr_client.set_policy(service_path, version)
            self.policy = {"version": version}
        else:
            self.policy = {"lora_path": service_path, "version": version}
        self.pushed_step = step
        self.folders.append(folder)
        while len(self.folders) > self.keep:
            shutil.rmtree(self.folders.pop(0), ignore_errors=True)


def _trl_matched_config(user: ScoringConfig | Mapping[str, Any] | None, *, norm_by_std: bool) -> dict[str, Any]:
    """The user's overrides plus the base-advantage fields that make the service agree with TRL."""
    if isinstance(user, ScoringConfig):
        user = user.model_dump(exclude_unset=True)
    config = dict(user or {})
    matched = {"std_eps": TRL_STD_EPS, "std_unbiased": True, "norm_by_std": norm_by_std}
    for name, value in matched.items():
        if name in config and config[name] != value:
            how = "set GRPOConfig.scale_rewards instead" if name == "norm_by_std" else f"TRL uses {value!r}"
            raise ValueError(
                f"amr_config.{name}={config[name]!r} would make the service's base advantage differ "
                f"from TRL's; remove it ({how}).")
    ScoringConfig.model_validate(config)  # a bad field fails here, at construction, not mid-run
    return {**config, **matched}


def _text(content: Any) -> str:
    # TRL normalises message content to a list of {"type": "text", ...} blocks for some models.
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")
