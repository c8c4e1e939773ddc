"""Policy sync through a real `amr-sd serve` (vLLM, LoRA on, fp32, an API key): full-weight
reloads, LoRA adapters per request, version requirements, and the guards around them.

References are independent of the server: a fresh vLLM engine started on the perturbed folder,
and transformers + peft for the adapter.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from amr_client import AMRClient, PolicyMismatchError, UnprocessableEntityError
from amr_client.schemas import ScoreRequest

# One label per folder for the whole session: the service binds a label to its folder.
LABELS = {"original": "orig", "perturbed": "pert"}
PROMPT_IDS = list(range(200, 230))
# A reflection budget no other test uses: its records have cache keys of their own, so this
# module's tests do not see each other's reflections in the server's cache.
OWN_CACHE_KEY = 15


def body(n_tokens: int = 40, *, policy: dict | None = None, reflect: bool = False,
         reflection_tokens: int = 16) -> dict:
    """One group, two rollouts (reward 1 and 0), so both get a reflection and both passes run.

    `prompt_token_ids` makes the student sequence exactly PROMPT_IDS + token_ids, which the
    transformers reference rebuilds by hand. Overrides skip reflection writing unless `reflect`.
    """
    rollouts = []
    for k, (reward, text) in enumerate(((1.0, "Check the sum."), (0.0, "Recount the terms."))):
        rollout = {"token_ids": [(300 + 97 * k + 13 * t) % 40000 + 100 for t in range(n_tokens)],
                   "reward": reward}
        if not reflect:
            rollout["reflection_override"] = text
        rollouts.append(rollout)
    payload = {"step": 0, "groups": [{"prompt": {"text": "What is 17 + 25?", "prompt_token_ids": PROMPT_IDS},
                                      "rollouts": rollouts, "reference": {"answer": "42"}}],
               "return": {"logprobs": True}}
    if reflect:
        payload["config"] = {"max_reflection_tokens": reflection_tokens, "max_retries": 0}
    if policy is not None:
        payload["policy"] = policy
    return payload


def logprobs(answer: dict) -> np.ndarray:
    """Student then teacher logprobs of both rollouts, one flat array."""
    rows = answer["groups"][0]["rollouts"]
    return np.concatenate([np.array(r[k]) for r in rows for k in ("student_logprobs", "teacher_logprobs")])


@pytest.fixture(scope="module")
def http(policy_server):
    with httpx.Client(base_url=policy_server.base_url, timeout=300,
                      headers={"Authorization": f"Bearer {policy_server.api_key}"}) as c:
        yield c


@pytest.fixture(scope="module")
def client(policy_server):
    with AMRClient(policy_server.base_url, api_key=policy_server.api_key) as c:
        yield c


def use(client: AMRClient, folder: str) -> None:
    status = client.set_policy(folder, LABELS[folder])
    assert status.version == LABELS[folder]


def score(http: httpx.Client, payload: dict) -> dict:
    response = http.post("/v1/score", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def fresh_perturbed(policy_server, run):
    """The scores of `body()` from a vLLM engine started on the perturbed folder, then closed."""
    from amr_sd.engine.base import EngineSettings
    from amr_sd.engine.vllm import VLLMEngine
    from amr_sd.scoring import Scorer

    engine = VLLMEngine.create(str(policy_server.folders["perturbed"]),
                               EngineSettings(dtype="float32", gpu_memory_utilization=0.1))
    try:
        answer = run(Scorer(engine).score(ScoreRequest.model_validate(body())))
        written = run(Scorer(engine).score(ScoreRequest.model_validate(
            body(reflect=True, reflection_tokens=OWN_CACHE_KEY))))
    finally:
        run(engine.close())
    return logprobs(answer.model_dump(mode="json")), reflections(written.model_dump(mode="json"))


def reflections(answer: dict) -> list[str]:
    return [r["reflection"]["text"] for r in answer["groups"][0]["rollouts"]]


def test_reload_changes_scores_to_the_new_weights_and_back(http, client, fresh_perturbed):
    use(client, "original")
    before = score(http, body())
    assert before["policy_version"] == "orig" and before["adapter"] is None

    started = time.perf_counter()
    status = client.set_policy("perturbed", "pert")
    wall = time.perf_counter() - started
    print(f"reload of the embedded model: {status.reload_s:.3f} s in the engine, {wall:.3f} s for the call")
    assert status.changed and status.previous_version == "orig" and status.reload_s > 0
    assert client.info()["policy_version"] == "pert"

    after = score(http, body())
    assert after["policy_version"] == "pert"
    changed = np.abs(logprobs(after) - logprobs(before))
    assert changed.max() > 0.5, "the perturbed layer did not change the scores"
    np.testing.assert_allclose(logprobs(after), fresh_perturbed[0], atol=1e-4, rtol=0)

    use(client, "original")
    back = score(http, body())
    assert back["policy_version"] == "orig"
    np.testing.assert_allclose(logprobs(back), logprobs(before), atol=1e-5, rtol=0)


def test_after_a_reload_the_writer_reads_no_kv_of_the_old_weights(http, client, fresh_perturbed):
    # The same writer prompt under the old weights first fills vLLM's prefix cache; the reload
    # must clear it, or the greedy reflection after it is written over the old weights' KV.
    use(client, "original")
    old = score(http, body(reflect=True, reflection_tokens=OWN_CACHE_KEY))
    use(client, "perturbed")
    new = score(http, body(reflect=True, reflection_tokens=OWN_CACHE_KEY))
    # Both written by the engine now, none from the reflection cache (keyed by the version).
    assert old["stats"]["reflections_generated"] == new["stats"]["reflections_generated"] == 2
    assert reflections(new) == fresh_perturbed[1] and reflections(new) != reflections(old)


def test_same_folder_and_label_again_is_a_no_op(client):
    use(client, "original")
    again = client.set_policy("original", "orig")
    assert again.changed is False and again.version == "orig"


@pytest.mark.parametrize("folder,reason", [
    ("missing_tensor", "missing"), ("wrong_shape", "shape"), ("wrong_arch", "architecture"),
    ("truncated", "safetensors"), ("no_config", "config.json"), ("lora", "config.json"),
    ("does_not_exist", "not a folder"), ("../", "outside the policy root"),
    ("/etc", "outside the policy root"), ("escape_link", "outside the policy root"),
])
def test_a_bad_checkpoint_is_422_and_the_old_weights_stay(policy_server, http, client, folder, reason):
    link = policy_server.root / "escape_link"
    if not link.exists():  # inside the root, pointing out of it
        os.symlink(os.path.expanduser("~"), link)
    use(client, "perturbed")
    reference = logprobs(score(http, body()))
    response = http.post("/v1/policy", json={"path": folder, "version": "broken"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "path" and reason in response.json()["error"]["message"]
    assert client.get_policy().version == "pert"
    np.testing.assert_array_equal(logprobs(score(http, body())), reference)


def test_a_label_names_one_folder(http, client):
    use(client, "original")
    response = http.post("/v1/policy", json={"path": "perturbed", "version": "orig"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "version"


def test_reload_needs_the_api_key(policy_server):
    payload = {"path": "perturbed", "version": "pert"}
    assert httpx.post(f"{policy_server.base_url}/v1/policy", json=payload).status_code == 401
    wrong = httpx.post(f"{policy_server.base_url}/v1/policy", json=payload,
                       headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403


def test_a_required_version_is_409_when_another_is_served(http, client):
    use(client, "perturbed")
    assert score(http, body(policy={"version": "pert"}))["policy_version"] == "pert"
    response = http.post("/v1/score", json=body(policy={"version": "orig"}))
    assert response.status_code == 409
    assert response.json()["error"] == {
        "type": "policy_mismatch", "field": "policy.version",
        "message": "the service holds policy version 'pert'; the request requires 'orig'"}
    started = time.perf_counter()
    with pytest.raises(PolicyMismatchError):  # final: the client does not retry it
        client.score(body()["groups"], step=0, policy={"version": "orig"})
    assert time.perf_counter() - started < 5


def test_requests_in_flight_during_reloads_are_each_scored_under_one_version(http, client):
    big = body(150)
    refs = {}
    for folder in ("original", "perturbed"):
        use(client, folder)
        refs[LABELS[folder]] = logprobs(score(http, big))
    assert np.abs(refs["orig"] - refs["pert"]).max() > 0.5

    answers, reloads = [], []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for folder in ("original", "perturbed", "original", "perturbed"):
            answers += [pool.submit(score, http, big) for _ in range(3)]
            time.sleep(0.5)  # let them reach the engine, then reload under them
            reloads.append(client.set_policy(folder, LABELS[folder]))
        answers = [a.result() for a in answers]

    versions = [a["policy_version"] for a in answers]
    assert set(versions) == {"orig", "pert"}, versions
    for answer in answers:
        # Student and teacher passes of both rollouts all match one version's reference: a
        # request that saw a reload mid-way would match neither.
        np.testing.assert_allclose(logprobs(answer), refs[answer["policy_version"]], atol=1e-4, rtol=0)
    assert max(r.wait_s for r in reloads) > 0.1, "no reload had to wait for requests in flight"


def test_lora_adapter_matches_transformers_with_peft(policy_server, http, client):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    use(client, "original")
    plain = score(http, body())
    adapted = score(http, body(policy={"lora_path": "lora", "version": "lora-1"}))
    assert adapted["adapter"] == "lora-1" and adapted["policy_version"] == "orig"
    by_name = score(http, body(policy={"lora_name": "fixed"}))
    assert by_name["adapter"] == "fixed"
    np.testing.assert_allclose(logprobs(by_name), logprobs(adapted), atol=1e-5, rtol=0)

    model = AutoModelForCausalLM.from_pretrained(str(policy_server.folders["original"]), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(policy_server.folders["lora"])).eval()
    for k, rollout in enumerate(body()["groups"][0]["rollouts"]):
        ids = torch.tensor([PROMPT_IDS + rollout["token_ids"]])
        with torch.inference_mode():
            logits = model(ids).logits[0, len(PROMPT_IDS) - 1:-1].float()
        reference = torch.log_softmax(logits, -1).gather(1, ids[0, len(PROMPT_IDS):, None])[:, 0].numpy()
        served = np.array(adapted["groups"][0]["rollouts"][k]["student_logprobs"])
        without = np.array(plain["groups"][0]["rollouts"][k]["student_logprobs"])
        assert np.abs(served - without).max() > 0.5, "the adapter did not change the scores"
        np.testing.assert_allclose(served, reference, atol=2e-3, rtol=0)
    assert "lora-1" in client.get_policy().adapters_loaded

    # Base and adapter requests sharing engine steps: each keeps its own numbers.
    with ThreadPoolExecutor(max_workers=4) as pool:
        mixed = list(pool.map(lambda p: score(http, body(policy=p)),
                              [None, {"lora_path": "lora", "version": "lora-1"}] * 2))
    for answer in mixed:
        expected = adapted if answer["adapter"] == "lora-1" else plain
        np.testing.assert_allclose(logprobs(answer), logprobs(expected), atol=1e-4, rtol=0)


def test_reflections_are_cached_per_adapter(http, client):
    use(client, "original")
    adapter = {"lora_path": "lora", "version": "lora-1"}
    first = score(http, body(reflect=True))["stats"]
    assert first["reflections_generated"] == 2
    assert score(http, body(reflect=True))["stats"]["reflections_cached"] == 2
    # Same request with the adapter: another writer, so none of the base reflections is reused.
    with_adapter = score(http, body(reflect=True, policy=adapter))["stats"]
    assert with_adapter["reflections_cached"] == 0 and with_adapter["reflections_generated"] == 2
    assert score(http, body(reflect=True, policy=adapter))["stats"]["reflections_cached"] == 2


@pytest.mark.parametrize("policy,field,reason", [
    ({"lora_path": "lora_rank16", "version": "r16"}, "policy.lora_path", "rank 16"),
    ({"lora_path": "original", "version": "x"}, "policy.lora_path", "adapter_config.json"),
    ({"lora_path": "../", "version": "x"}, "policy.lora_path", "outside the policy root"),
    ({"lora_path": "lora_bad_shape", "version": "bad"}, "policy.lora_path", "needs [8, 576]"),
    ({"lora_path": "lora_dora", "version": "dora"}, "policy.lora_path", "vLLM could not load"),
    ({"lora_name": "unknown"}, "policy.lora_name", "registered: fixed"),
    ({"lora_path": "lora"}, "policy", "version label"),
    ({"lora_name": "fixed", "version": "v"}, "policy", "no version"),
])
def test_a_bad_adapter_is_422_and_the_engine_keeps_serving(http, client, policy, field, reason):
    use(client, "original")
    response = http.post("/v1/score", json=body(policy=policy))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and reason in error["message"], error
    # vLLM dies on a request whose adapter it cannot load; the service loads it first instead.
    assert score(http, body())["policy_version"] == "orig"


def test_without_a_policy_root_or_lora_the_service_says_so(amr_server):
    response = httpx.post(f"{amr_server}/v1/policy", json={"path": "x", "version": "v"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "policy_disabled"
    with AMRClient(amr_server) as c:
        with pytest.raises(UnprocessableEntityError, match="--enable-lora") as err:
            c.score(body()["groups"], step=0, policy={"lora_path": "x", "version": "v"})
        status = c.get_policy()
    assert err.value.field == "policy.lora_path"
    assert status.version == "base" and status.lora_enabled is False
