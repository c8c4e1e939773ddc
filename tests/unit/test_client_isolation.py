"""The client SDK installs without the server: importing it never touches torch, vLLM, FastAPI,
transformers or `amr_sd`.

Each test runs a fresh interpreter whose import system refuses those packages, because this
test process has already imported some of them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK_SERVER_PACKAGES = textwrap.dedent("""
    import sys

    BLOCKED = {"torch", "vllm", "fastapi", "transformers", "amr_sd"}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked by test: {name}")
            return None

    sys.meta_path.insert(0, Refuse())
""")


def run_without_server_packages(code: str) -> subprocess.CompletedProcess:
    script = BLOCK_SERVER_PACKAGES + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_sdk_imports_and_builds_a_request_without_server_packages():
    done = run_without_server_packages("""
        import amr_client
        import amr_client.saved  # a trainer saves batches for the viewer with the SDK alone
        from amr_client._base import build_score_body

        client = amr_client.AMRClient("http://127.0.0.1:8000", api_key="k")
        body = build_score_body(
            [{"prompt": {"text": "1 + 1 ="}, "rollouts": [{"token_ids": [1, 2], "reward": 1.0}]}],
            step=0, config={"lambda_pos": 0.3})
        assert body["config"] == {"lambda_pos": 0.3}, body
        client.close()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_advantages_padded_without_torch_raises_import_error_naming_torch():
    done = run_without_server_packages("""
        from amr_client import ScoreResponse, ScoreResult

        stats = dict(groups=1, rollouts=1, response_tokens=1, tokens_scored=2, reflected_tokens=0,
                     gated_tokens=0, gate_rate=0.0, reflections_requested=0, reflections_generated=0,
                     reflections_accepted=0, reflections_rejected=0, acceptance_rate=0.0,
                     cig_mean=0.0, cig_std=0.0, nonfinite_cig=0, mean_abs_base_advantage=0.0,
                     mean_abs_advantage=0.0)
        response = ScoreResponse(model="m", policy_version="p", template_version="t", step=0,
                                 anneal_weight=1.0, stats=stats,
                                 groups=[{"rollouts": [{"advantages": [0.5], "base_advantage": 0.5}]}])
        result = ScoreResult(response)
        assert result.advantages_numpy()[0].tolist() == [0.5]  # numpy helpers still work
        try:
            result.advantages_padded()
        except ImportError as exc:
            assert "torch" in str(exc), exc
            print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
