"""Specification of `amr_client.integrations.policy.PolicySync` and of the base-teacher warning.

A fake client stands in for the service: these tests pin what each step's request names and which
reloads are asked for. The verl manager's own wiring runs against a real server in
`tests_verl/test_verl_adapter.py`; the TRL trainer's in `tests/e2e/test_trl.py`.
"""

from __future__ import annotations

import asyncio
import warnings
from types import SimpleNamespace

import pytest

from amr_client.integrations.policy import BaseTeacherWarning, PolicySync


class FakeClient:
    """Records `set_policy` calls; nothing else is used."""

    def __init__(self):
        self.reloads: list[tuple[str, str]] = []

    def set_policy(self, path: str, version: str):
        self.reloads.append((path, version))


class FakeAsyncClient(FakeClient):
    async def set_policy(self, path: str, version: str):
        self.reloads.append((path, version))


def base_teacher_warnings(caught) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, BaseTeacherWarning)]


def test_lora_names_the_folder_of_each_due_step_and_keeps_it_between():
    client = FakeClient()
    sync = PolicySync(client, "lora", path="run-7/step-{step}", sync_steps=2, label="r7")
    policies = [sync.policy_for(step) for step in (1, 2, 3, 4)]
    # Due at the first call (1), then every 2 steps (3); 2 and 4 reuse the last push.
    assert policies == [{"lora_path": "run-7/step-1", "version": "r7-step-1"}] * 2 + \
                       [{"lora_path": "run-7/step-3", "version": "r7-step-3"}] * 2
    assert client.reloads == []  # an adapter travels with each request: the service is untouched


def test_full_reloads_the_service_then_requires_that_version():
    client = FakeClient()
    sync = PolicySync(client, "full", path=lambda step: f"/shared/run-7/global_step_{step}", label="r7")
    assert sync.policy_for(5) == {"version": "r7-step-5"}
    assert sync.policy_for(6) == {"version": "r7-step-6"}
    assert client.reloads == [("/shared/run-7/global_step_5", "r7-step-5"),
                              ("/shared/run-7/global_step_6", "r7-step-6")]


def test_async_full_sync_awaits_the_reload():
    client = FakeAsyncClient()
    sync = PolicySync(client, "full", path="ckpt/{step}", label="r7")
    assert asyncio.run(sync.apolicy_for(3)) == {"version": "r7-step-3"}
    assert client.reloads == [("ckpt/3", "r7-step-3")]


def test_a_step_with_no_checkpoint_yet_keeps_the_current_weights_and_the_next_tries_again():
    # verl checkpoints after a step: step N's rollouts come from global_step_{N-1}, none for N = 1.
    client = FakeClient()
    sync = PolicySync(client, "full", label="r7",
                      path=lambda step: f"ckpt/global_step_{step - 1}" if step > 1 else None)
    assert sync.policy_for(1) is None and sync.metrics() == {}
    assert sync.policy_for(2) == {"version": "r7-step-2"}
    assert client.reloads == [("ckpt/global_step_1", "r7-step-2")]


def test_metrics_name_the_step_whose_weights_scored_and_time_only_pushes():
    sync = PolicySync(FakeClient(), "lora", path="p/{step}", sync_steps=10, label="r")
    sync.policy_for(0)
    pushed = sync.metrics()
    sync.policy_for(1)
    assert set(pushed) == {"policy_step", "policy_push_seconds"} and pushed["policy_step"] == 0.0
    assert sync.metrics() == {"policy_step": 0.0}


def test_without_a_policy_the_first_call_warns_once_that_the_teacher_is_the_base_model():
    sync = PolicySync(FakeClient())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every warning issued, not only the first per line
        assert [sync.policy_for(step) for step in range(3)] == [None, None, None]
    (warning,) = base_teacher_warnings(caught)
    assert "the teacher is the base model" in str(warning.message)
    assert "amr_policy_sync" in str(warning.message)
    assert sync.metrics() == {}


def test_a_synced_policy_never_warns():
    sync = PolicySync(FakeClient(), "lora", path="p/{step}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sync.policy_for(0)
    assert base_teacher_warnings(caught) == []


def test_the_default_label_is_a_fresh_run_id():
    first = PolicySync(FakeClient(), "lora", path="p").policy_for(0)
    second = PolicySync(FakeClient(), "lora", path="p").policy_for(0)
    assert first["version"].startswith("run-") and first["version"].endswith("-step-0")
    assert first["version"] != second["version"]  # two runs never share a reflection-cache label


@pytest.mark.parametrize("kwargs, message", [
    ({"sync": "weights", "path": "p"}, "amr_policy_sync must be 'off', 'lora' or 'full'"),
    ({"sync": "lora"}, "needs amr_policy_path"),
    ({"sync": "full", "path": "p", "sync_steps": 0}, "amr_policy_sync_steps must be >= 1"),
    ({"sync": "lora", "path": "p", "label": "run 7"}, "amr_policy_label"),
])
def test_settings_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolicySync(FakeClient(), **kwargs)


# ------------------------------------------------------------------------------------------------
# TRL: the trainer's own sync (tests/e2e/test_trl.py); here only the warning when it is off
# ------------------------------------------------------------------------------------------------


class ScoringClient:
    """Answers one group with one advantage per token."""

    def __init__(self):
        self.policies = []

    def score(self, groups, *, step, config, policy, returns):
        self.policies.append(policy)
        rollouts = [SimpleNamespace(advantages=[0.0] * len(r["token_ids"])) for g in groups for r in g["rollouts"]]
        stats = SimpleNamespace(gate_rate=0.0, acceptance_rate=0.0, reflections_generated=0,
                                reflections_cached=0, mean_abs_advantage=0.0, mean_abs_base_advantage=0.0,
                                positive=SimpleNamespace(gate_rate=0.0, cig_p95=0.0),
                                negative=SimpleNamespace(gate_rate=0.0, cig_p05=0.0))
        return SimpleNamespace(advantages=lambda: [r.advantages for r in rollouts], stats=stats,
                               anneal_weight=1.0)


def trl_trainer_without_sync(client):
    """The state `AMRGRPOTrainer._score_on_main` reads, without loading a model."""
    from amr_client.integrations.trl import AMRGRPOTrainer
    from amr_client.saved import StepSaver

    trainer = AMRGRPOTrainer.__new__(AMRGRPOTrainer)
    trainer.num_generations, trainer.state = 2, SimpleNamespace(global_step=0)
    trainer.amr_client, trainer.amr_config, trainer.amr_fallback_to_grpo = client, {}, False
    trainer.amr_saver, trainer._amr_sync = StepSaver(None, 0), None
    trainer._amr_base_warned = False
    return trainer


def test_trl_trainer_without_policy_sync_warns_once_per_run():
    pytest.importorskip("trl")
    client = ScoringClient()
    trainer = trl_trainer_without_sync(client)
    rows = {"prompts": ["2 + 2 ="] * 2, "prompt_ids": [[1, 2]] * 2, "completion_ids": [[3], [4, 5]],
            "feedback": None, "references": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            trainer.state.global_step = step
            per_row, _ = trainer._score_on_main(rows, [1.0, 0.0])
    assert per_row == [[0.0], [0.0, 0.0]]
    assert client.policies == [None, None]
    (warning,) = base_teacher_warnings(caught)
    assert "the teacher is the base model" in str(warning.message)
