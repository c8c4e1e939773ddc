"""Many replicas behind one `ReplicaClient`: what a second real replica gives on this machine, and
what the client's fan-out costs as replicas are added.

1. Real replicas. Two `amr-sd serve` processes on the measured model, float32, a 1 GiB KV
   cache and the score cache off, replica k pinned to CPU k (taskset, and vLLM's threads bound to
   it). The same scoring-only batch (groups bring `reflection_override`) goes through
   `AMRClient` to replica 0 alone and through `ReplicaClient` to both, alternating round by
   round; the ratio is the 2-replica median against the 1-replica median. For context, one server
   on both CPUs (this machine's usual setup) scores the same batch first: two one-CPU replicas
   share the very CPUs one two-CPU server uses, so the most they can give is about what that
   server gives. Each 2-replica answer is checked against the 1-replica answer (per-token
   advantages within `SAME_ANSWER_TOL`).
2. Fan-out. N processes of the real server (uvicorn, `Runtime`, FastAPI app) over a stand-in
   engine of fixed speed (`standin_server`: `COST_S_PER_TOKEN` per scored token, a sleep), N up
   to 16. Every replica gets the same shard (`GROUPS_PER_REPLICA` equal groups each), so the
   ideal is N times one replica's throughput; efficiency is the measured share of that. Each
   replica's /metrics gives its work (tokens scored) and its own time in requests, psutil its
   CPU, so a shortfall can be placed: the client (encoding, validation, merging), the replicas'
   own CPU work on a machine they share, or balance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from amr_client.shards import group_tokens, split

from bench.common import corpus, host, procs, report

# Figure 1: the real engine. float32 and a small KV cache, the same on every server.
ENGINE_FLAGS = ("--dtype", "float32", "--kv-cache-gib", "1")
REAL_BATCH = {False: (16, 4, 128), True: (8, 4, 128)}  # quick -> (groups, G, response tokens)
REAL_ROUNDS = {False: 3, True: 2}
SAME_ANSWER_TOL = 1e-5  # float32 engines; groups are scored independently of their shard

# Figure 2: the stand-in engine. 2 ms per scored token is about what one CPU core of this
# machine gives the 135M model in float32 (docs/speed.md: 301-385 scored tok/s), so one replica's
# shard (4 groups x 4 x 128 tokens, two passes: 4,096 scored tokens) keeps its engine busy ~8 s,
# against ~50 ms of the service's own CPU for it (the "replica CPU s" column).
COST_S_PER_TOKEN = 0.002
GROUPS_PER_REPLICA, FANOUT_G, FANOUT_LENGTH = 4, 4, 128
FANOUT_NS = {False: (1, 2, 4, 8, 16), True: (1, 2, 4, 8)}
FANOUT_ROUNDS = 3
RETURNS = {"reflections": False}


# ---------------------------------------------------------------------------------- pure parts


def fanout_groups(tokenizer, n_replicas: int, per_replica: int, size: int, length: int) -> list[dict]:
    """A batch that gives every one of `n_replicas` replicas the same work: `per_replica` groups
    each, all of one weight (`size` x `length` response tokens), distinct token windows."""
    return corpus.groups(tokenizer, n_replicas * per_replica, size, length)


def balance(weights: Sequence[int], n_shards: int) -> dict:
    """How `ReplicaClient` would split these group weights: shard loads, and max / mean load
    (1.0 is perfect balance; the slowest replica sets the wall time)."""
    loads = [sum(weights[i] for i in shard) for shard in split(weights, n_shards)]
    return {"shard_tokens": loads, "max_over_mean": max(loads) / statistics.fmean(loads)}


def max_over_mean(values: Sequence[float]) -> float | None:
    return max(values) / statistics.fmean(values) if values and statistics.fmean(values) else None


def efficiency(tok_s: float, n: int, one_replica_tok_s: float) -> float | None:
    """Throughput with n replicas as a share of n times one replica's."""
    return report.ratio(tok_s, n * one_replica_tok_s)


def max_abs_diff(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Largest per-token difference of two answers' advantages (one list per rollout); infinite
    when their shapes differ."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        return float("inf")
    return max((abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y)), default=0.0)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus sample `name` over the series whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# ---------------------------------------------------------------------------------- figure 1


def _timed(client, groups: list[dict]) -> tuple[float, object]:
    began = time.perf_counter()
    answer = client.score(groups, step=0, returns=RETURNS)
    return time.perf_counter() - began, answer


def _summary(times: list[float], tokens: int, loads: list[float]) -> dict:
    """Median wall and throughput; `loads`, the 1-minute load average after each round, kept
    beside them: well above the CPUs the bench keeps busy, other work shared them."""
    wall = statistics.median(times)
    return {"times_s": times, "median_s": wall, "response_tok_s": tokens / wall,
            "load_after_rounds": loads}


def run_real(out_dir: Path, quick: bool) -> dict:
    from amr_client import AMRClient, ReplicaClient

    cpus = host.usable_cpus()
    if len(cpus) < 2:
        return {"skipped": f"needs two CPUs, this process may use {len(cpus)}"}
    two = cpus[:2]
    n, size, length = REAL_BATCH[quick]
    rounds = REAL_ROUNDS[quick]
    tokenizer = corpus.load_tokenizer()
    groups = corpus.groups(tokenizer, n, size, length)
    warm = corpus.groups(tokenizer, 2, 2, 16)  # one small group per replica: first-request costs
    tokens = n * size * length
    log_dir = out_dir / "logs"
    print(f"replicas, real ({'quick' if quick else 'full'}): {n}x{size}x{length} "
          f"({tokens:,} response tokens), {rounds} rounds each, CPUs {two}", flush=True)

    # The context: one server on both CPUs (this machine's default binding when it has two).
    both = procs.amr_replica(log_dir, "amr-sd-two-cpus", *ENGINE_FLAGS, cpus=two,
                             env=procs.NO_SCORE_CACHE)
    both.start(timeout_s=300)
    try:
        with AMRClient(both.base_url, max_retries=0) as client:
            client.score(warm, step=0, returns=RETURNS)
            times, loads, answers = [], [], []
            for _ in range(rounds):
                t, answer = _timed(client, groups)
                times.append(t)
                loads.append(host.load()[0])
                answers.append(answer.advantages())
                print(f"  one server, CPUs {two}: {t:.1f} s (load {loads[-1]:.1f})", flush=True)
        two_cpus = {**_summary(times, tokens, loads), "startup_s": both.startup_s}
    finally:
        both.stop()

    replicas = [procs.amr_replica(log_dir, f"amr-sd-replica-{k}", *ENGINE_FLAGS, cpus=[cpu],
                                  env=procs.NO_SCORE_CACHE) for k, cpu in enumerate(two)]
    try:
        procs.start_all(replicas, timeout_s=300)
        urls = [r.base_url for r in replicas]
        with AMRClient(urls[0], max_retries=0) as one, ReplicaClient(urls, max_retries=0) as pair:
            one.score(warm, step=0, returns=RETURNS)
            pair.score(warm, step=0, returns=RETURNS)
            times = {"1 replica": [], "2 replicas": []}
            loads = {"1 replica": [], "2 replicas": []}
            got = {"1 replica": [], "2 replicas": []}
            for r in range(rounds):
                # Alternating, and the order flipped each round: drift hits both alike.
                order = [("1 replica", one), ("2 replicas", pair)][::1 if r % 2 == 0 else -1]
                for label, client in order:
                    t, answer = _timed(client, groups)
                    times[label].append(t)
                    loads[label].append(host.load()[0])
                    got[label].append(answer.advantages())
                    print(f"  {label}: {t:.1f} s (load {loads[label][-1]:.1f})", flush=True)
        startup = [r.startup_s for r in replicas]
    finally:
        procs.stop_all(replicas)

    reference = got["1 replica"][0]
    diff = max(max_abs_diff(reference, a) for a in got["2 replicas"] + got["1 replica"][1:])
    rows = [{"setup": f"one server, CPUs {two}", "cpus": 2, **two_cpus},
            {"setup": f"1 replica, CPU {two[0]}", "cpus": 1,
             **_summary(times["1 replica"], tokens, loads["1 replica"])},
            {"setup": f"2 replicas, CPUs {two[0]} and {two[1]}", "cpus": 2,
             **_summary(times["2 replicas"], tokens, loads["2 replicas"])}]
    for row in rows:
        row["vs_1_replica"] = report.ratio(row["response_tok_s"], rows[1]["response_tok_s"])
        row["vs_two_cpu_server"] = report.ratio(row["response_tok_s"], rows[0]["response_tok_s"])
    return {"batch": {"groups": n, "size": size, "length": length, "response_tokens": tokens},
            "rounds": rounds, "engine_flags": list(ENGINE_FLAGS), "replica_startup_s": startup,
            "rows": rows, "max_abs_diff": diff, "same_answer": diff <= SAME_ANSWER_TOL,
            "two_cpu_vs_1_replica_max_abs_diff": max(max_abs_diff(reference, a) for a in answers),
            "load": host.load()}


# ---------------------------------------------------------------------------------- figure 2


def _standin(log_dir: Path, k: int) -> procs.ServerProcess:
    port = procs.free_port()
    command = [sys.executable, "-m", "bench.speed.standin_server", "--port", str(port),
               "--cost-s-per-token", repr(COST_S_PER_TOKEN)]
    return procs.ServerProcess(f"amr-sd-standin-{k}", command, port=port, ready_path="/readyz",
                               log_dir=log_dir)


def _replica_counters(servers: Sequence[procs.ServerProcess]) -> list[dict]:
    """Each replica's work so far: tokens scored, seconds inside score requests, CPU seconds."""
    import httpx
    import psutil

    out = []
    for s in servers:
        text = httpx.get(s.base_url + "/metrics", timeout=10).text
        cpu = psutil.Process(s.pid).cpu_times()
        out.append({"tokens_scored": metric(text, "amr_sd_tokens_scored_total"),
                    "request_s": metric(text, "amr_sd_request_duration_seconds_sum",
                                        route="/v1/score"),
                    "cpu_s": cpu.user + cpu.system})
    return out


def _memory(servers: Sequence[procs.ServerProcess]) -> dict:
    import psutil

    infos = [psutil.Process(s.pid).memory_full_info() for s in servers]
    return {"processes": len(infos), "rss_bytes_each_max": max(i.rss for i in infos),
            "uss_bytes_total": sum(i.uss for i in infos)}


def _fanout_point(client, groups: list[dict], servers, rounds: int) -> dict:
    from amr_client._base import build_score_body

    n = len(servers)
    began = time.perf_counter()
    build_score_body(groups, step=0, returns=RETURNS)
    encode_s = time.perf_counter() - began  # the client's validation and JSON form of the batch
    walls, client_cpu, per_round = [], [], []
    for _ in range(rounds):
        before = _replica_counters(servers)
        cpu0, t0 = time.process_time(), time.perf_counter()
        answer = client.score(groups, step=0, returns=RETURNS)
        walls.append(time.perf_counter() - t0)
        client_cpu.append(time.process_time() - cpu0)
        after = _replica_counters(servers)
        per_round.append([{k: a[k] - b[k] for k in a} for a, b in zip(after, before)])
        assert len(answer) == len(groups)
    i = walls.index(statistics.median_low(walls))  # the median round, with its replicas' figures
    replicas = per_round[i]
    tokens = sum(group_tokens(g) for g in groups)
    engine_s = [r["tokens_scored"] * COST_S_PER_TOKEN for r in replicas]
    return {"replicas": n, "groups": len(groups), "response_tokens": tokens, "times_s": walls,
            "median_s": walls[i], "response_tok_s": tokens / walls[i],
            "planned_balance": balance([group_tokens(g) for g in groups], n)["max_over_mean"],
            "measured_balance": max_over_mean([r["tokens_scored"] for r in replicas]),
            "engine_s_max": max(engine_s), "beyond_engine_s": walls[i] - max(engine_s),
            "replica_request_s_max": max(r["request_s"] for r in replicas),
            "replica_cpu_s_mean": statistics.fmean(r["cpu_s"] for r in replicas),
            "replica_cpu_s_total": sum(r["cpu_s"] for r in replicas),
            "client_cpu_s": client_cpu[i], "client_encode_s": encode_s,
            "per_replica": replicas, "load": host.load()}


def run_fanout(out_dir: Path, quick: bool) -> dict:
    from amr_client import ReplicaClient
    from amr_sd.engine.models import EMBEDDED_MODEL

    ns = FANOUT_NS[quick]
    rounds = FANOUT_ROUNDS
    tokenizer = corpus.load_tokenizer(EMBEDDED_MODEL)  # the stand-in's tokenizer
    print(f"replicas, fan-out ({'quick' if quick else 'full'}): N = {list(ns)} stand-in replicas, "
          f"{GROUPS_PER_REPLICA} groups x {FANOUT_G} x {FANOUT_LENGTH} tokens per replica, "
          f"{COST_S_PER_TOKEN * 1000:g} ms per scored token, {rounds} rounds", flush=True)
    servers = [_standin(out_dir / "logs", k) for k in range(max(ns))]
    rows = []
    try:
        began = time.monotonic()
        procs.start_all(servers, timeout_s=300)
        startup_s = time.monotonic() - began
        for n in ns:
            groups = fanout_groups(tokenizer, n, GROUPS_PER_REPLICA, FANOUT_G, FANOUT_LENGTH)
            with ReplicaClient([s.base_url for s in servers[:n]], max_retries=0) as client:
                client.score(fanout_groups(tokenizer, n, 1, 2, 16), step=0, returns=RETURNS)
                rows.append(_fanout_point(client, groups, servers[:n], rounds))
            r = rows[-1]
            print(f"  N = {n}: {r['median_s']:.2f} s, {r['response_tok_s']:,.0f} response tok/s",
                  flush=True)
        memory = _memory(servers)
    finally:
        procs.stop_all(servers)
    for r in rows:
        r["efficiency"] = efficiency(r["response_tok_s"], r["replicas"], rows[0]["response_tok_s"])
    return {"cost_s_per_token": COST_S_PER_TOKEN, "groups_per_replica": GROUPS_PER_REPLICA,
            "size": FANOUT_G, "length": FANOUT_LENGTH, "rounds": rounds,
            "startup_s": startup_s, "memory": memory, "rows": rows}


# ---------------------------------------------------------------------------------- the part


FIGURES = {"real": run_real, "fanout": run_fanout}


def run(out_dir: Path, quick: bool = False, figures: Sequence[str] = tuple(FIGURES)) -> dict:
    """Both figures (or those named); one that fails is recorded and the other still runs, and
    the part then raises, after its JSON is written and the figure that ran is printed."""
    import traceback

    data = {"part": "replicas", "quick": quick, "model": corpus.model(),
            "baseline": {"real": "1 replica (AMRClient), alternating with 2 (ReplicaClient)",
                         "fanout": "N x one stand-in replica's throughput, same run"}}
    for name in figures:
        try:
            data[name] = FIGURES[name](out_dir, quick)
        except Exception as exc:
            traceback.print_exc()
            data[name] = {"error": f"{type(exc).__name__}: {exc}"}
    report.write_json(out_dir / "replicas.json", data)
    real = data.get("real", {})
    if "rows" in real:
        report.bars(out_dir / "replicas_real.png", [r["setup"] for r in real["rows"]],
                    [r["response_tok_s"] for r in real["rows"]], baseline=real["rows"][1]["setup"],
                    title=f"{data['model']}, float32: one batch, 1 vs 2 replicas",
                    ylabel="response tokens/s")
    fanout = data.get("fanout", {})
    if "rows" in fanout:
        report.bars(out_dir / "replicas_fanout.png", [f"N = {r['replicas']}" for r in fanout["rows"]],
                    [r["efficiency"] for r in fanout["rows"]], baseline="N = 1",
                    title="ReplicaClient over N stand-in replicas: throughput / (N x one replica's)",
                    ylabel="efficiency")
    failed = [name for name in figures if "error" in data[name]]
    if failed:
        print_table(data)
        raise RuntimeError("replicas: " + "; ".join(f"{n}: {data[n]['error']}" for n in failed))
    return data


def print_table(data: dict) -> None:
    real = data.get("real")
    if real and "rows" in real:
        b = real["batch"]
        rows = [{"setup": r["setup"], "median s": r["median_s"], "resp tok/s": r["response_tok_s"],
                 "x 1 replica": r["vs_1_replica"], "x one 2-CPU server": r["vs_two_cpu_server"]}
                for r in real["rows"]]
        print(report.table(f"replicas, real: {data['model']} float32, {b['groups']}x{b['size']}x"
                           f"{b['length']}, median of {real['rounds']} (baseline: 1 replica, "
                           "alternating with 2)", rows, list(rows[0])))
        verdict = "equal" if real["same_answer"] else "DIFFERENT"
        print(f"2-replica answers vs the 1-replica answer: {verdict} (max |Δ advantage| = "
              f"{real['max_abs_diff']:.2g}, tolerance {SAME_ANSWER_TOL:g}); one 2-CPU server vs 1 "
              f"replica: max |Δ| = {real['two_cpu_vs_1_replica_max_abs_diff']:.2g}")
    elif real:
        print(f"replicas, real: {real.get('skipped') or 'failed: ' + real.get('error', '?')}")
    f = data.get("fanout")
    if f and "rows" in f:
        rows = [{"N": r["replicas"], "groups": r["groups"], "median s": r["median_s"],
                 "resp tok/s": r["response_tok_s"], "x N x one": r["efficiency"],
                 "balance max/mean": r["measured_balance"], "engine s": r["engine_s_max"],
                 "wall - engine s": r["beyond_engine_s"], "replica s": r["replica_request_s_max"],
                 "replica CPU s": r["replica_cpu_s_mean"], "client CPU s": r["client_cpu_s"]}
                for r in f["rows"]]
        print(report.table(f"replicas, fan-out: stand-in engine at {f['cost_s_per_token'] * 1000:g} "
                           f"ms per scored token, {f['groups_per_replica']}x{f['size']}x{f['length']} "
                           f"per replica, median of {f['rounds']} (baseline: N x one replica's tok/s)",
                           rows, list(rows[0])))
        m = f["memory"]
        print(f"engine s: the slowest replica's engine time (its tokens scored x the cost); wall - "
              f"engine s: what the fan-out, the wire and the service add to it; replica s: the "
              f"slowest replica's time in its score request; replica CPU s: each replica's own CPU "
              f"(request handling), mean; client CPU s: this process's. {m['processes']} "
              f"stand-in processes: {m['rss_bytes_each_max'] / 2**20:.0f} MiB RSS each at most, "
              f"{m['uss_bytes_total'] / 2**30:.1f} GiB unique memory together")
    elif f:
        print(f"replicas, fan-out: failed: {f.get('error')}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--figures", nargs="+", choices=list(FIGURES), default=list(FIGURES))
    args = parser.parse_args()
    print_table(run(args.out, args.quick, args.figures))
