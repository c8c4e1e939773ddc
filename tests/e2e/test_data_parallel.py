"""vLLM data parallelism inside one server: `amr-sd serve --data-parallel-size 2` starts two
engine copies behind one endpoint, both do the work, and the answer is the one a single copy
gives.

Both servers run float32 with a small KV cache per copy (a quarter GiB: ~6k tokens of the
embedded model), one after the other, never two at once. On a CPU the two copies split the cores
(`cpu_threads_bind` 0|1 on 2 CPUs), so the reference server computes with other thread counts and
batch shapes, and the tolerance is float32 noise.
"""

from __future__ import annotations

import httpx
import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.e2e

SERVER_ARGS = ("--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "1024")
GROUPS = 8  # ~1,000 response tokens, each scored with and without the reflection
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def payload(example_groups) -> dict:
    """Fixed reflections (no generation): the answer is a function of the engine's numbers."""
    groups = [{**g, "rollouts": [{**r, "reflection_override": "Check the last step's sum."}
                                 for r in g["rollouts"]]} for g in example_groups[:GROUPS]]
    return {"step": 0, "groups": groups, "return": {"logprobs": True, "cig": True}}


def score(base_url: str, payload: dict) -> dict:
    response = httpx.post(f"{base_url}/v1/score", json=payload, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def numbers(answer: dict) -> dict[str, np.ndarray]:
    """Every per-token number of the answer, one flat array per field (a rollout the scorer did
    not run, such as one of a uniform-reward group, has no logprobs: NaN there)."""
    rows = [r for g in answer["groups"] for r in g["rollouts"]]
    return {key: np.concatenate([np.asarray(r[key] if r[key] is not None
                                            else [np.nan] * len(r["advantages"]), dtype=np.float64)
                                 for r in rows])
            for key in ("advantages", "student_logprobs", "teacher_logprobs", "cig")}


def engine_copies(server) -> dict[str, list[psutil.Process]]:
    """Each vLLM engine core of the server by its title (VLLM::EngineCore_DP<rank>), with the
    processes under it (its model worker)."""
    copies = {}
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        title = " ".join(proc.cmdline()).strip()  # setproctitle pads it with spaces
        if title.startswith("VLLM::EngineCore"):
            copies[title] = [proc, *proc.children(recursive=True)]
    return copies


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


@pytest.fixture(scope="module")
def one_copy_answer(tmp_path_factory, launch_server, payload) -> dict:
    with launch_server(tmp_path_factory.mktemp("dp1") / "server.log", *SERVER_ARGS) as server:
        return score(server.base_url, payload)


@pytest.fixture(scope="module")
def two_copies(tmp_path_factory, launch_server, one_copy_answer):
    # After the one-copy server has stopped (one_copy_answer): one server of this module at a time.
    log = tmp_path_factory.mktemp("dp2") / "server.log"
    with launch_server(log, *SERVER_ARGS, "--data-parallel-size", "2") as server:
        yield server


def test_info_reports_two_engine_copies(two_copies):
    info = httpx.get(f"{two_copies.base_url}/v1/info").json()
    settings = info["engine_settings"]
    assert settings["data_parallel_size"] == 2 and settings["tensor_parallel_size"] == 1
    if settings["cpu_threads_bind"] not in (None, "auto", "nobind"):
        # On a CPU each copy gets CPUs of its own: one list per copy.
        assert len(settings["cpu_threads_bind"].split("|")) == 2


def test_vllm_runs_two_engine_cores_and_both_score(two_copies, payload, one_copy_answer):
    copies = engine_copies(two_copies)
    assert sorted(copies) == ["VLLM::EngineCore_DP0", "VLLM::EngineCore_DP1"], copies
    before = {name: cpu_seconds(procs) for name, procs in copies.items()}
    answer = score(two_copies.base_url, payload)
    used = {name: cpu_seconds(procs) - before[name] for name, procs in copies.items()}
    # vLLM spreads the batch's scoring requests over both copies: each computed a share (an idle
    # copy uses a few hundredths of a second in this time).
    assert all(seconds > 0.5 for seconds in used.values()), used

    # The same numbers as one copy computes, to float32 noise.
    got, want = numbers(answer), numbers(one_copy_answer)
    for key in want:
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=TOLERANCE, equal_nan=True,
                                   err_msg=key)
