"""`python -m bench [--quick] [--only PART ...] [--model NAME]`: every benchmark, one run, one report.

Parts run one after another, never side by side: on a small CPU two engines at once would
measure each other. The two parts without an engine (encoding, viewer) go first, then the engine
sweep (no server running), then the service-overhead part (a recording server, then the replay on
a bare engine), then one `amr-sd serve` serves the scaling part, the HTTP-vs-gRPC comparison and
amr-sd's side of the peer comparison; the peers' servers (plain `vllm serve` and TRL's) start after
the HTTP-vs-gRPC part and run beside amr-sd while their paths alternate. The replicas part runs
last, with servers of its own. A part that fails is recorded and the rest still run.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
import traceback
from pathlib import Path

from amr_sd.engine.models import EMBEDDED_MODEL
from bench import OUT_DIR
from bench.common import corpus, host, procs, report
from bench.speed import encoding, engine_sweep, overhead, peer, replicas, scaling, transport, viewer

PARTS = ("encoding", "viewer", "engine", "overhead", "scaling", "transport", "peer", "replicas")


def _engine_scoring_tok_s(sweep: dict | None) -> float | None:
    """Raw engine scoring speed with the settings the server will use, from this run."""
    if not sweep:
        return None
    label = sweep["summary"]["default_label"]
    hit = next((r for r in sweep["results"] if r["label"] == label and "scoring" in r), None)
    return hit and hit["scoring"]["tok_s"]


def _best_batched(sweep: dict | None) -> dict | None:
    """The sweep's best vLLM rates, for the utilisation figure: prefill positions/s (every
    position of a scored sequence is computed, not only its scored rows) and decode tokens/s
    (a generation's wall less its prompts' prefill at that rate)."""
    if not sweep:
        return None
    vllm = [r for r in sweep["results"] if r["config"]["engine"] == "vllm"]
    per_row = sweep["seq_len"] / (sweep["seq_len"] - sweep["start_index"])
    prefill = max((r["scoring"]["tok_s"] * per_row for r in vllm if r.get("scoring")), default=None)
    decode = None
    for r in vllm:
        g = r.get("generation")
        if g and prefill and "prompt_tokens" in g:
            busy = g["seconds"] - g["prompt_tokens"] / prefill
            decode = max(decode or 0.0, g["tokens"] / busy) if busy > 0 else decode
    return {"prefill_tok_s": prefill, "decode_tok_s": decode}


def _print_overhead(data: dict) -> None:
    print("\n".join(["## service vs the replayed raw engine", *overhead.table(data)]))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few minutes")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", type=Path, help=f"default {OUT_DIR}, or {OUT_DIR}/MODEL for a "
                                                  "model other than the embedded default")
    parser.add_argument("--model", help="the model every part measures: an embedded name "
                                        "(default the embedded default) or a model folder")
    args = parser.parse_args()
    if args.model:
        os.environ["AMR_BENCH_MODEL"] = args.model  # engines and servers of every part see it
    args.out = args.out or (OUT_DIR if corpus.model() == EMBEDDED_MODEL else OUT_DIR / corpus.model())
    # A SIGTERM unwinds like Ctrl-C, so every server and engine this run started is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    began = time.monotonic()
    summary: dict = {"quick": args.quick, "model": corpus.model(), "machine": host.describe(),
                     "parts": {}}
    printers: list = []

    def part(name: str, fn, printer):
        t0 = time.monotonic()
        try:
            data = fn()
        except Exception as exc:
            traceback.print_exc()
            summary["parts"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                      "seconds": time.monotonic() - t0}
            return None
        summary["parts"][name] = {"seconds": time.monotonic() - t0,
                                  "json": str(args.out / f"{name}.json")}
        printer(data)
        printers.append((printer, data))
        return data

    if "encoding" in args.only:
        part("encoding", lambda: encoding.run(args.out, args.quick), encoding.print_table)
    if "viewer" in args.only:
        part("viewer", lambda: viewer.run(args.out, args.quick), viewer.print_table)
    sweep = None
    if "engine" in args.only:
        sweep = part("engine_sweep", lambda: engine_sweep.run(args.out, args.quick),
                     engine_sweep.print_table)
    if "overhead" in args.only:
        part("overhead", lambda: overhead.run(args.out, args.quick, _best_batched(sweep)),
             _print_overhead)
    if {"scaling", "transport", "peer"} & set(args.only):
        grpc_port = procs.free_port()
        # Score cache off: these parts time the same batch sent again and again.
        server = procs.amr_server(args.out / "logs", "--grpc-port", str(grpc_port),
                                  env=procs.NO_SCORE_CACHE)
        t0 = time.monotonic()
        try:
            server.start(timeout_s=300)
        except Exception as exc:
            summary["amr_server"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"amr-sd serve did not become ready: {exc}")
        else:
            summary["amr_server"] = {"startup_s": time.monotonic() - t0, "log": str(server.log_path)}
            print(f"amr-sd serve ready in {summary['amr_server']['startup_s']:.0f} s", flush=True)
            try:
                if "scaling" in args.only:
                    part("scaling", lambda: scaling.run(args.out, server.base_url, server.pid,
                                                        args.quick, _engine_scoring_tok_s(sweep)),
                         scaling.print_table)
                if "transport" in args.only:
                    part("transport", lambda: transport.run(args.out, server.base_url,
                                                            f"127.0.0.1:{grpc_port}", args.quick),
                         transport.print_table)
                if "peer" in args.only:
                    part("peer", lambda: peer.run(args.out, server.base_url, args.quick),
                         peer.print_table)
            finally:
                summary["amr_server"]["exit_code"] = server.stop()
    if "replicas" in args.only:
        # Last, with servers of its own: two one-CPU engines, then up to 16 stand-in replicas.
        part("replicas", lambda: replicas.run(args.out, args.quick), replicas.print_table)

    summary["wall_s"] = time.monotonic() - began
    if sweep:
        summary["engine"] = sweep["summary"]
    report.write_json(args.out / "summary.json", summary)
    print(f"\n==== summary ({'quick' if args.quick else 'full'} run, {summary['wall_s']:.0f} s; "
          f"{summary['machine']['cpu_model']}, {len(summary['machine']['cpus'])} CPUs) ====")
    for printer, data in printers:
        print()
        printer(data)
    failed = [n for n, p in summary["parts"].items() if "error" in p]
    if failed or "error" in summary.get("amr_server", {}):
        print(f"\nfailed: {', '.join(failed) or 'amr-sd serve'}; see {args.out / 'summary.json'}")
        return 1
    print(f"\nJSON and PNG files under {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
