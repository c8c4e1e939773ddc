"""`make demo`: start the service on an embedded model, score the groups that model sampled
itself through AMRClient, show why tokens got their credit and which tokens each critique blamed,
print a summary, stop the service, and write the credit viewer (build/demo-view.html).

    python examples/demo.py [--model smollm2-135m-instruct] [--in GROUPS.jsonl] [--step 0]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from show_scored import show
from transformers import AutoTokenizer

from amr_client import AMRClient
from amr_client.saved import VIEW_RETURNS, save_scored
from amr_sd import cli
from amr_sd.engine.models import EMBEDDED_MODEL, resolve_model

SCORED = Path("build/demo-scored.jsonl")
VIEW = Path("build/demo-view.html")


def start_server(port: int, log_path: Path, model: str) -> subprocess.Popen:
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port),
                             "--model", model], stdout=log, stderr=subprocess.STDOUT)


def examples_for(model: str) -> Path:
    """The example groups a model sampled itself: examples/data/groups.jsonl for the default,
    groups-MODEL.jsonl for another embedded model."""
    return Path("examples/data") / ("groups.jsonl" if model == EMBEDDED_MODEL
                                    else f"groups-{model}.jsonl")


def critiques(groups: list[dict], result, tok, limit: int = 6) -> None:
    """Each accepted critique beside the tokens its gate blamed: does it name a real mistake?"""
    print("\ncritiques the policy wrote, and the tokens their gate blamed:")
    shown = 0
    for group_in, group_out in zip(groups, result.groups):
        for r_in, r_out in zip(group_in["rollouts"], group_out.rollouts):
            rec = r_out.reflection
            if r_out.base_advantage >= 0 or rec is None or not rec.accepted or shown >= limit:
                continue
            blamed = [tok.decode([t]) for t, g in zip(r_in["token_ids"], r_out.gated or []) if g]
            print(f"  - {rec.text}\n    blamed: {' '.join(repr(b) for b in blamed) or 'none'}")
            shown += 1


def wait_ready(client: AMRClient, proc: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the service did not start; its log:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="an embedded model name")
    parser.add_argument("--in", dest="input", type=Path,
                        help="groups to score (default: the ones the model sampled itself)")
    parser.add_argument("--step", type=int, default=0)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    args.input = args.input or examples_for(args.model)
    groups = [json.loads(line) for line in args.input.read_text().splitlines() if line.strip()]

    log_path = Path("build/demo-server.log")
    log_path.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    proc = start_server(args.port, log_path, args.model)
    try:
        with AMRClient(f"http://127.0.0.1:{args.port}") as client:
            print(f"starting amr-sd on 127.0.0.1:{args.port} (log: {log_path}) ...", flush=True)
            wait_ready(client, proc, log_path)
            t1 = time.perf_counter()
            print(f"ready in {t1 - t0:.0f} s; scoring {len(groups)} groups at step {args.step} ...", flush=True)
            # Streamed: a bar moves per scored group, and no single deadline covers the batch.
            result = client.score(groups, step=args.step, returns=VIEW_RETURNS, progress=True)
            t2 = time.perf_counter()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    if code != 0:
        sys.exit(f"the service exited with {code} on SIGTERM; its log: {log_path}")

    tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
    colour = sys.stdout.isatty()
    shown = set()
    for group_in, group_out in zip(groups, result.groups):
        for r_in, r_out in zip(group_in["rollouts"], group_out.rollouts):
            kind = "hint" if r_out.base_advantage > 0 else "critique"
            gated = any(a != r_out.base_advantage for a in r_out.advantages)
            if kind not in shown and gated:
                label = "successful rollout" if kind == "hint" else "failed rollout"
                show(label, r_in, r_out.model_dump(), tok, colour)
                shown.add(kind)

    critiques(groups, result, tok)

    s = result.stats
    rows = [
        ("groups / rollouts", f"{s.groups} / {s.rollouts}"),
        ("reflections accepted", f"{s.reflections_accepted} of {s.reflections_requested} "
                                 f"({s.acceptance_rate:.1%}); generated {s.reflections_generated}"),
        ("rejected by reason", ", ".join(f"{k} {v}" for k, v in sorted(s.reject_reasons.items())) or "-"),
        ("gate rate", f"{s.gate_rate:.1%} ({s.gated_tokens} of {s.reflected_tokens} reflected tokens)"),
        ("  hints / critiques", f"{s.positive.gate_rate:.1%} (τ+ {s.positive.tau:g}, CIG p95 "
                                f"{s.positive.cig_p95:+.2f}) / {s.negative.gate_rate:.1%} (τ- "
                                f"{s.negative.tau:g}, CIG p05 {s.negative.cig_p05:+.2f})"),
        ("mean |Â| vs mean |A|", f"{s.mean_abs_advantage:.4f} vs {s.mean_abs_base_advantage:.4f}"),
        ("CIG mean ± std", f"{s.cig_mean:+.3f} ± {s.cig_std:.3f} nats"),
        ("response tokens/s", f"{s.response_tokens / (t2 - t1):.1f} ({s.response_tokens} tokens in {t2 - t1:.1f} s)"),
        ("end to end", f"{time.perf_counter() - t0:.0f} s (start-up {t1 - t0:.0f} s); service stopped cleanly"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")

    save_scored(SCORED, groups, result, decode=tok.decode)
    if cli.main(["view", str(SCORED), "--out", str(VIEW)]) != 0:
        sys.exit("the credit viewer could not be written")
    print(f"\ncredit viewer: {VIEW.resolve()} (open it in a browser, or "
          f"`amr-sd view {SCORED} --serve` and open http://127.0.0.1:8765/)")


if __name__ == "__main__":
    main()
