"""What the service costs on top of its engine, whether it keeps the engine busy, and loop lag.

One `amr-sd serve` with a recording engine (`bench.speed.recorder`) answers three workloads
through `AMRClient` over HTTP:
  (a) scoring only: synthetic groups whose rollouts bring their reflection (`reflection_override`);
  (b) the example groups, reflections written by the model;
  (c) (b) again: its reflections come from the reflection cache and its scoring passes from the
      score cache (same tokens, same policy version), so the engine has nothing to do.
Then `bench.speed.replay` runs exactly the engine calls each workload made on a bare AsyncLLM
with the same settings, keeping their order and concurrency. service wall / replay wall is the
service's overhead (target <= 1.10). Engine utilisation during (b) is the time the engine would
need at the sweep's best batched speed for the work it did, over the wall time (target >= 80 %).
The work is every position computed: whole scored sequences (prompt, reflection and response: prompt
logprobs compute them all) and writer prompts at the prefill rate, generated tokens at the decode
rate. A writer prompt counts once: its retries read it from vLLM's prefix cache.
Event-loop lag is how late a 10 ms timer fired in the server during (b) (target p99 < 50 ms).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import corpus, procs


def _workloads(quick: bool) -> dict:
    tok = corpus.load_tokenizer()
    examples = corpus.example_groups()
    # The size for (a) is 64 x 8 x 256; on 2 CPU cores that is ~10 minutes per side, so
    # the default run takes a quarter of it (same shape) and --quick less.
    n_groups, n_examples = (2, 4) if quick else (16, 12)
    return {
        "a_scoring_only": corpus.groups(tok, n_groups, 8, 256),
        "b_reflections": examples[:n_examples],
        "c_cached_repeat": examples[:n_examples],
    }


def _tokens(calls: list[dict]) -> dict:
    """What a list of recorded calls asked of the engine, in tokens."""
    generated = sum(sum(c["generated"]) for c in calls if c["kind"] == "generate")
    scored = [(s, st) for c in calls if c["kind"] == "score" for s, st in zip(c["sequences"], c["starts"])]
    prompts = {tuple(p) for c in calls if c["kind"] == "generate" for p in c["prompts"]}
    return {"generated_tokens": generated, "scored_rows": sum(len(s) - st for s, st in scored),
            "scored_positions": sum(len(s) for s, _ in scored),
            "writer_prompt_tokens": sum(len(p) for p in prompts)}


def run(out_dir: Path, quick: bool = False, best: dict | None = None) -> dict:
    """`best`: {"scoring_tok_s", "generation_tok_s"} from the engine sweep of the same run."""
    from amr_client import AMRClient

    out_dir.mkdir(parents=True, exist_ok=True)
    record, windows_path, replay_path = (out_dir / "overhead-calls.json",
                                         out_dir / "overhead-windows.json",
                                         out_dir / "overhead-replay.json")
    port = procs.free_port()
    server = procs.ServerProcess(
        "amr-sd-recording", [sys.executable, "-m", "bench.speed.recorder", "--port", str(port),
                             "--record", str(record)],
        port=port, ready_path="/readyz", log_dir=out_dir)
    windows, results = {}, {}
    with server:
        with AMRClient(server.base_url, max_retries=0) as client:
            for name, groups in _workloads(quick).items():
                t0 = time.time()
                answer = client.score(groups, step=0)
                t1 = time.time()
                windows[name] = [t0, t1]
                s = answer.stats
                results[name] = {"service_s": t1 - t0, "groups": s.groups, "rollouts": s.rollouts,
                                 "response_tokens": s.response_tokens,
                                 "tokens_scored": s.tokens_scored,
                                 "reflections_generated": s.reflections_generated,
                                 "reflections_cached": s.reflections_cached,
                                 "scores_cached": s.scores_cached}
    windows_path.write_text(json.dumps(windows))
    subprocess.run([sys.executable, "-m", "bench.speed.replay", str(record), "--windows",
                    str(windows_path), "--out", str(replay_path)], check=True)
    replayed = json.loads(replay_path.read_text())
    recording = json.loads(record.read_text())
    for name, (t0, t1) in windows.items():
        r = results[name]
        r.update(replayed[name])
        r["overhead"] = r["service_s"] / r["replay_s"] if r["replay_s"] else None
        calls = [c for c in recording["calls"] if t0 <= c["start"] <= t1]
        r.update(_tokens(calls))
        lag = np.array([v for t, v in recording["lag"] if t0 <= t <= t1]) * 1000
        if lag.size:
            r["loop_lag_ms"] = {"p50": float(np.percentile(lag, 50)),
                                "p99": float(np.percentile(lag, 99)), "max": float(lag.max())}
    b = results["b_reflections"]
    if best and best.get("prefill_tok_s") and best.get("decode_tok_s"):
        needed = (b["generated_tokens"] / best["decode_tok_s"]
                  + (b["scored_positions"] + b["writer_prompt_tokens"]) / best["prefill_tok_s"])
        b["engine_utilisation"] = needed / b["service_s"]
        results["best_batched"] = best
    c = results["c_cached_repeat"]
    results["cached_speedup"] = b["service_s"] / c["service_s"] if c["service_s"] else None
    results["engine_settings"] = recording["engine_settings"]
    (out_dir / "overhead.json").write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> list[str]:
    lines = ["| workload | service s | replayed engine s | overhead | passes cached | "
             "loop lag p50 / p99 ms |", "|---|---|---|---|---|---|"]
    for name in ("a_scoring_only", "b_reflections", "c_cached_repeat"):
        r = results[name]
        lag = r.get("loop_lag_ms", {})
        overhead = f"{r['overhead']:.2f}x" if r["overhead"] else "- (no engine calls)"
        lines.append(f"| {name} | {r['service_s']:.2f} | {r['replay_s']:.2f} | {overhead} | "
                     f"{r.get('scores_cached', 0)} | {lag.get('p50', 0):.1f} / {lag.get('p99', 0):.1f} |")
    b = results["b_reflections"]
    if "engine_utilisation" in b:
        best = results["best_batched"]
        lines.append(f"\nengine utilisation during (b): {b['engine_utilisation']:.0%} of the sweep's "
                     f"best batched speed (prefill {best['prefill_tok_s']:.0f} positions/s, decode "
                     f"{best['decode_tok_s']:.0f} tok/s; {b['scored_positions']} scored positions, "
                     f"{b['writer_prompt_tokens']} writer-prompt and {b['generated_tokens']} "
                     "generated tokens)")
    if results.get("cached_speedup"):
        lines.append(f"cached repeat (c) vs cold (b): {results['cached_speedup']:.1f}x faster")
    return lines


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    print("\n".join(table(run(args.out, args.quick))))
