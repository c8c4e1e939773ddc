"""Replay recorded engine calls on a bare vLLM `AsyncLLM`: the service's work without the service.

    python -m bench.speed.replay calls.json --windows windows.json --out replay.json

The engine is started with exactly the settings the recorded server reported, and driven with
the same requests `VLLMEngine` sends (same token ids and sampling parameters; each generation
decodes exactly as many tokens as it did in the service), without the
scorer, HTTP, JSON, cache or any amr-sd code on the request path. Order and concurrency are kept
as recorded: a call starts once every call that had ended before it started in the recording has
ended here, so the replay never waits for anything the service did not wait for, and never
overlaps calls the service ran one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from pathlib import Path

from bench.common import corpus


def dependencies(calls: list[dict]) -> list[list[int]]:
    """For each call, the calls that had ended before it started (the ones it may have waited on)."""
    return [[j for j, other in enumerate(calls) if other["end"] <= call["start"]]
            for call in calls]


async def replay(llm, calls: list[dict]) -> float:
    """Run `calls` on `llm` with their recorded dependencies; wall seconds."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    ids = itertools.count()

    async def one(prompt_ids, params):
        async for _ in llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params,
                                    f"replay-{next(ids)}"):
            pass

    async def run(call):
        if call["kind"] == "score":
            params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0,
                                    detokenize=False, flat_logprobs=True,
                                    output_kind=RequestOutputKind.FINAL_ONLY)
            await asyncio.gather(*(one(s, params) for s in call["sequences"]))
        else:
            # Exactly as many tokens as the service's call decoded (sampling would not give the
            # same lengths again), whether it stopped at the closing tag or was abandoned.
            p = call["params"]
            await asyncio.gather(*(one(pr, SamplingParams(
                max_tokens=max(1, n), ignore_eos=True, temperature=p["temperature"],
                output_kind=RequestOutputKind.FINAL_ONLY))
                for pr, n in zip(call["prompts"], call["generated"])))

    done = [asyncio.Event() for _ in calls]
    deps = dependencies(calls)

    async def scheduled(i):
        for j in deps[i]:
            await done[j].wait()
        await run(calls[i])
        done[i].set()

    began = time.perf_counter()
    await asyncio.gather(*(scheduled(i) for i in range(len(calls))))
    return time.perf_counter() - began


async def _main(args) -> dict:
    from amr_sd.engine.base import EngineSettings
    from amr_sd.engine.vllm import VLLMEngine

    recording = json.loads(args.record.read_text())
    windows = json.loads(args.windows.read_text())
    used = recording["engine_settings"]
    settings = EngineSettings.for_device().with_overrides(
        dtype=used["dtype"], kv_cache_gib=used["kv_cache_gib"],
        max_num_batched_tokens=used["max_num_batched_tokens"],
        cpu_threads_bind=used["cpu_threads_bind"], prefix_caching=used.get("prefix_caching"))
    engine = VLLMEngine.create(corpus.model(), settings)
    try:
        await engine.warmup()
        out = {}
        for name, (t0, t1) in windows.items():
            calls = [c for c in recording["calls"] if t0 <= c["start"] <= t1]
            out[name] = {"calls": len(calls), "replay_s": await replay(engine._llm, calls) if calls else 0.0}
        return out
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", type=Path)
    parser.add_argument("--windows", type=Path, required=True,
                        help="JSON {workload: [start, end]} in wall-clock seconds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
