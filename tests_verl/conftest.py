"""Fixtures for the verl adapter tests: a real amr-sd server and its model's tokenizer.

These tests run in their own venv, because verl 0.9.1 pins transformers 5.10 while the server's
vLLM needs a newer one (docs: ECOSYSTEM.md, "Version clashes"). Start a server from the main venv
and point AMR_URL at it:

    .venv/bin/amr-sd serve --port 8000 --gpu-memory-utilization 0.1 &
    AMR_URL=http://127.0.0.1:8000 .venv-verl/bin/python -m pytest -q tests_verl

The policy-sync tests need a second server with LoRA, a policy root holding a rank-8 PEFT adapter
in `lora/` (tests/e2e/policy_assets.py makes one) and an API key; `tests/e2e/test_verl.py` starts
it and sets AMR_POLICY_URL, AMR_POLICY_ROOT and AMR_POLICY_KEY:

    .venv/bin/amr-sd serve --port 8001 --enable-lora --max-lora-rank 8 --policy-root /tmp/root &

Without AMR_URL (or, for those tests, AMR_POLICY_URL) the run fails rather than skips, so a green
run always means the adapter talked to a real service.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from amr_client import AMRClient


@pytest.fixture(scope="session")
def amr_url() -> str:
    url = os.environ.get("AMR_URL")
    if not url:
        pytest.fail("AMR_URL is not set: start `.venv/bin/amr-sd serve --port 8000` and run "
                    "`AMR_URL=http://127.0.0.1:8000 .venv-verl/bin/python -m pytest -q tests_verl`")
    with AMRClient(url) as client:
        if not client.ready():
            pytest.fail(f"the amr-sd server at AMR_URL={url} is not ready (GET /readyz): "
                        "wait for it to load its model, or check the URL")
    return url


@pytest.fixture(scope="session")
def tokenizer(amr_url: str):
    # The server's own model folder, so token ids mean the same thing on both sides.
    with AMRClient(amr_url) as client:
        return AutoTokenizer.from_pretrained(client.info()["model_path"])


@pytest.fixture(scope="session")
def policy_service() -> SimpleNamespace:
    """The LoRA-enabled server: its url, policy root (with the adapter in `lora/`) and API key."""
    url, root = os.environ.get("AMR_POLICY_URL"), os.environ.get("AMR_POLICY_ROOT")
    if not url or not root:
        pytest.fail("AMR_POLICY_URL and AMR_POLICY_ROOT are not set: start `amr-sd serve --enable-lora "
                    "--max-lora-rank 8 --policy-root ROOT` with a PEFT adapter in ROOT/lora, or run "
                    "tests/e2e/test_verl.py, which does")
    api_key = os.environ.get("AMR_POLICY_KEY")
    with AMRClient(url, api_key=api_key) as client:
        if not client.ready():
            pytest.fail(f"the amr-sd server at AMR_POLICY_URL={url} is not ready (GET /readyz)")
    return SimpleNamespace(url=url, root=Path(root), api_key=api_key)
