"""`make demo`: start the service on the embedded model, score the example groups through
AMRClient, show why tokens got their credit, print a summary, stop the service, and write the
credit viewer (build/demo-view.html) for the scored batch.

    python examples/demo.py [--in examples/data/groups.jsonl] [--step 0] [--port 8000]
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


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", "amr_sd.cli", "serve", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)


def wait_ready(client: AMRClient, proc: subprocess.Popen, log_path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"the service did not start; its log:\n{log_path.read_text()[-3000:]}")
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="input", type=Path, default=Path("examples/data/groups.jsonl"))
    parser.add_argument("--step", type=int, default=0)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    groups = [json.loads(line) for line in args.input.read_text().splitlines() if line.strip()]

    log_path = Path("build/demo-server.log")
    log_path.parent.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    proc = start_server(args.port, log_path)
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

    tok = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED_MODEL))
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
