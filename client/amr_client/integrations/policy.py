"""Which policy scores each step, for trainers whose weights the adapter does not hold.

AMR-SD's teacher is the current policy: the reflections and both scoring passes come from the
weights being trained (docs/method.md, "Notation"). A service left on its starting weights scores
every step against the base model. The trainer saves the weights that sampled a step's rollouts
into the service's `AMR_POLICY_ROOT` (a PEFT adapter, or a `save_pretrained` checkpoint) and
`PolicySync` names them in that step's request:

    sync = PolicySync(client, "lora", path="run-7/step-{step}")   # the adapter that sampled step N
    result = client.score(groups, step=step, policy=sync.policy_for(step))

- "lora": every request names the adapter folder (`policy.lora_path`) and a version label
  `<label>-step-<N>`; nothing changes on the service, so several runs can share one base model.
- "full": on a due step, `set_policy(path, version)` (`POST /v1/policy`) reloads the service's
  weights; every request then requires that version, so a service another run moved answers
  409 instead of scoring with foreign weights.
- "off": nothing is named; the first call warns (`BaseTeacherWarning`) that the teacher is the
  base model.

A push is due at the first call and then every `sync_steps` steps. `path` is the folder as the
service names it (absolute, or relative to its policy root): a string formatted with `step=`, or
a function of the step, which may return None while no checkpoint exists yet (that step is
scored with the service's current weights, and the next call tries again). The names and meanings are those of the TRL adapter's
`amr_policy_sync`, which also saves the weights itself. `AMRRewardManager` (verl) takes them as
`amr_policy_*` arguments; other trainers call `policy_for` (`apolicy_for` with an
`AsyncAMRClient`) beside their own `score` call.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from amr_client.schemas import PolicyRef

__all__ = ["BaseTeacherWarning", "PolicySync", "warn_base_teacher"]

SYNC_MODES = ("off", "lora", "full")


class BaseTeacherWarning(UserWarning):
    """Scoring with the service's starting weights rather than the policy being trained."""


def warn_base_teacher() -> None:
    warnings.warn(
        "amr-sd scores this run without naming a policy, so the teacher is the base model the "
        "service started with, not the policy being trained; AMR-SD's teacher is the current "
        "policy (docs/method.md). Set amr_policy_sync='lora' or 'full' on the TRL or verl adapter, "
        "or pass policy=PolicySync(...).policy_for(step) to score() (docs/integrations.md).",
        BaseTeacherWarning, stacklevel=3)


class PolicySync:
    """Names, per step, the policy the service must score with; reloads it first for "full".

    Args:
        client: an `AMRClient` or `AMRGrpcClient` (`policy_for`), or an async client (`apolicy_for`).
        sync: "off" (default), "lora" or "full".
        path: the weights folder of a step as the service names it: "dir/step-{step}" or a
            function of the step (None: nothing saved yet). Required unless `sync` is "off".
        sync_steps: push every N steps, starting at the first call.
        label: prefix of the version labels, "<label>-step-<N>" (default: a random run id).
    """

    def __init__(self, client: Any, sync: str = "off", *,
                 path: str | Callable[[int], str | None] | None = None, sync_steps: int = 1,
                 label: str | None = None):
        if sync not in SYNC_MODES:
            raise ValueError(f"amr_policy_sync must be 'off', 'lora' or 'full', got {sync!r}")
        if sync != "off" and path is None:
            raise ValueError(f"amr_policy_sync={sync!r} needs amr_policy_path: the folder holding a "
                             "step's weights as the service names it (inside its AMR_POLICY_ROOT), "
                             "'dir/step-{step}' or a function of the step")
        if sync_steps < 1:
            raise ValueError(f"amr_policy_sync_steps must be >= 1, got {sync_steps}")
        self.client, self.sync, self.path, self.sync_steps = client, sync, path, sync_steps
        self.label = label or f"run-{uuid.uuid4().hex[:8]}"
        try:  # a bad label fails here, not as a 422 mid-run
            PolicyRef(version=self._version(0))
        except ValidationError:
            raise ValueError(f"amr_policy_label={label!r} makes an invalid version label: use "
                             "letters, digits and . _ : + @ -, starting with a letter or digit") from None
        self.pushed_step: int | None = None
        self.policy: dict[str, str] | None = None
        self.push_seconds: float | None = None  # the push this call made, if any
        self._warned = False

    def policy_for(self, step: int) -> dict[str, str] | None:
        """The request's `policy` for `step`, after reloading the service when a push is due."""
        path = self._due_folder(step)
        if path is not None:
            started, version = time.perf_counter(), self._version(step)
            if self.sync == "full":
                self.client.set_policy(path, version)
            self._pushed(step, path, version, started)
        return self.policy

    async def apolicy_for(self, step: int) -> dict[str, str] | None:
        """`policy_for` with an `AsyncAMRClient`."""
        path = self._due_folder(step)
        if path is not None:
            started, version = time.perf_counter(), self._version(step)
            if self.sync == "full":
                await self.client.set_policy(path, version)
            self._pushed(step, path, version, started)
        return self.policy

    def metrics(self) -> dict[str, float]:
        """`policy_step` (the step whose weights scored the last call) and, when that call
        pushed, `policy_push_seconds`; empty when off."""
        if self.pushed_step is None:
            return {}
        metrics = {"policy_step": float(self.pushed_step)}
        if self.push_seconds is not None:
            metrics["policy_push_seconds"] = self.push_seconds
        return metrics

    def _due_folder(self, step: int) -> str | None:
        """The folder to push now, or None when no push is due."""
        self.push_seconds = None
        if self.sync == "off":
            if not self._warned:
                self._warned = True
                warn_base_teacher()
            return None
        if self.pushed_step is not None and step - self.pushed_step < self.sync_steps:
            return None
        if isinstance(self.path, str):
            return self.path.format(step=step)
        folder = self.path(step)
        return None if folder is None else str(folder)

    def _pushed(self, step: int, path: str, version: str, started: float) -> None:
        if self.sync == "full":
            self.policy = {"version": version}
        else:
            self.policy = {"lora_path": path, "version": version}
        self.pushed_step = step
        self.push_seconds = time.perf_counter() - started

    def _version(self, step: int) -> str:
        return f"{self.label}-step-{step}"
