"""`PolicySync`, the per-step policy of the verl manager and of the shape-helper trainers, against
a real server with LoRA and a policy root (`policy_server`, conftest.py).

The verl manager's own call runs in verl's venv (`tests_verl/`, through test_verl.py); this module
needs no trainer, as a NeMo-RL, ROLL, AReaL, rllm or prime-rl run calling `policy_for` does not.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import pytest

from amr_client import AMRClient, AsyncAMRClient
from amr_client.integrations.policy import PolicySync

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data" / "groups.jsonl"
# Past the anneal (decay_steps 50 by default, set here so it holds): no reflection is written,
# so each call is one pass over a short group, and only the answer's labels are under test.
ANNEALED = {"decay_steps": 1}


def one_group() -> list[dict]:
    return [json.loads(EXAMPLES.read_text().splitlines()[28])]


def test_lora_sync_names_each_steps_adapter_and_the_answer_reports_it(policy_server):
    run = f"sync-{uuid.uuid4().hex[:8]}"
    for saved in (1, 2):  # a run that saves its adapter after every step
        shutil.copytree(policy_server.folders["lora"], policy_server.root / run / f"step-{saved}")
    with AMRClient(policy_server.base_url, api_key=policy_server.api_key) as client:
        sync = PolicySync(client, "lora", label=run,
                          path=lambda step: f"{run}/step-{step - 1}" if step > 1 else None)
        results = [client.score(one_group(), step=step, config=ANNEALED, policy=sync.policy_for(step))
                   for step in (1, 2, 3)]
        status = client.get_policy()
    assert [r.adapter for r in results] == [None, f"{run}-step-2", f"{run}-step-3"]
    assert {r.policy_version for r in results} == {status.version}  # adapters leave the full weights
    assert {f"{run}-step-2", f"{run}-step-3"} <= set(status.adapters_loaded)


def test_async_full_sync_reloads_the_service_and_the_answer_reports_the_version(policy_server):
    run = f"sync-full-{uuid.uuid4().hex[:8]}"

    async def scored():
        async with AsyncAMRClient(policy_server.base_url, api_key=policy_server.api_key) as client:
            sync = PolicySync(client, "full", label=run, sync_steps=2,
                              path=str(policy_server.folders["original"]))
            return [await client.score(one_group(), step=step, config=ANNEALED,
                                       policy=await sync.apolicy_for(step)) for step in (4, 5, 6)]

    results = asyncio.run(scored())
    assert [r.policy_version for r in results] == [f"{run}-step-4", f"{run}-step-4", f"{run}-step-6"]
    assert [r.adapter for r in results] == [None, None, None]
