"""How a running `amr-sd serve` scales with request size: time, throughput, peak memory.

Requests are synthetic groups whose rollouts carry a `reflection_override`, so the service
does no reflection writing and the time is scoring (two passes per rollout) plus the request
path around it. If that path adds no per-request surprises, seconds grow linearly with tokens:
the fit's R² says how well, and its slope is the service's marginal cost per token. Every
rollout also costs its prompt and reflection tokens, which the engine runs through the model
but which are not response tokens; a second fit on (response tokens, rollouts) separates the
per-token cost from that per-rollout cost.

The full grid (1-64 groups x G 4-16 x 64-1024 tokens) would be 36 requests up to 1M tokens,
hours on 2 cores; instead each factor varies from the centre point (1 group, G = 4, 64 tokens)
while the others stay put, so each effect shows on its own within minutes. 64 groups is left
out: on 2 CPU cores that one request (~62k engine tokens) takes ~3 minutes by itself.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import corpus, host, procs, report


@dataclass(frozen=True)
class Point:
    groups: int
    size: int  # G, rollouts per group
    length: int  # response tokens per rollout

    @property
    def tokens(self) -> int:
        return self.groups * self.size * self.length

    @property
    def label(self) -> str:
        return f"{self.groups}x{self.size}x{self.length}"


def grid(quick: bool) -> list[Point]:
    """One factor at a time from (groups, G, length) = (1, 4, 64), deduplicated, small first."""
    if quick:
        axes = [Point(n, 4, 64) for n in (1, 2)] + [Point(1, 8, 64)] + [Point(1, 4, 256)]
    else:
        axes = ([Point(n, 4, 64) for n in (1, 4, 16)]
                + [Point(1, g, 64) for g in (4, 8, 16)]
                + [Point(1, 4, n) for n in (64, 256, 1024)])
    return sorted(dict.fromkeys(axes), key=lambda p: p.tokens)


def measure_point(client, tokenizer, point: Point, server_pid: int | None) -> dict:
    groups = corpus.groups(tokenizer, point.groups, point.size, point.length)
    sampler = procs.RssSampler(server_pid) if server_pid else None
    began = time.perf_counter()
    if sampler:
        with sampler:
            result = client.score(groups, step=0, returns={"reflections": False})
    else:
        result = client.score(groups, step=0, returns={"reflections": False})
    wall_s = time.perf_counter() - began
    stats = result.stats
    return {**asdict(point), "label": point.label, "response_tokens": stats.response_tokens,
            "tokens_scored": stats.tokens_scored, "wall_s": wall_s,
            "response_tok_s": stats.response_tokens / wall_s,
            "scored_tok_s": stats.tokens_scored / wall_s,
            "peak_rss_bytes": sampler.peak_bytes if sampler else None,
            "rss_samples": sampler.samples if sampler else 0,
            "server_timings": stats.timings.model_dump(), "load": host.load()}


def run(out_dir: Path, base_url: str, server_pid: int | None = None, quick: bool = False,
        engine_tok_s: float | None = None) -> dict:
    """Scale requests against the amr-sd at `base_url`; memory when its pid is given.

    `engine_tok_s` (raw engine scoring, same settings, same run) adds the service's overhead as
    a ratio; otherwise the baseline is the smallest request.
    """
    from amr_client import AMRClient

    points = grid(quick)
    print(f"scaling ({'quick' if quick else 'full'}): {len(points)} requests, "
          f"{sum(p.tokens for p in points):,} response tokens", flush=True)
    tokenizer = corpus.load_tokenizer()
    rows = []
    with AMRClient(base_url, max_retries=0) as client:
        measure_point(client, tokenizer, Point(1, 2, 16), None)  # untimed: first-request costs
        for p in points:
            rows.append(measure_point(client, tokenizer, p, server_pid))
            r = rows[-1]
            print(f"  {p.label}: {r['wall_s']:.1f} s, {r['response_tok_s']:.0f} response tok/s",
                  flush=True)
    fit = report.linear_fit([r["response_tokens"] for r in rows], [r["wall_s"] for r in rows])
    fit["tokens_per_s_marginal"] = 1 / fit["slope"] if fit.get("slope") else None
    fit2 = report.least_squares({"response_tokens": [r["response_tokens"] for r in rows],
                                 "rollouts": [r["groups"] * r["size"] for r in rows]},
                                [r["wall_s"] for r in rows])
    baseline = rows[0]["response_tok_s"]
    for r in rows:
        r["tok_s_vs_smallest"] = report.ratio(r["response_tok_s"], baseline)
        r["scored_vs_engine"] = report.ratio(r["scored_tok_s"], engine_tok_s)
    data = {"part": "scaling", "quick": quick, "base_url": base_url,
            "baseline": f"smallest request ({rows[0]['label']})", "engine_scoring_tok_s": engine_tok_s,
            "fit_seconds_vs_response_tokens": fit,
            "fit_seconds_vs_tokens_and_rollouts": fit2, "results": rows}
    report.write_json(out_dir / "scaling.json", data)
    report.scatter_fit(out_dir / "scaling_fit.png", [r["response_tokens"] for r in rows],
                       [r["wall_s"] for r in rows], fit, labels=[r["label"] for r in rows],
                       title="amr-sd scoring-only requests (groups x G x length)",
                       xlabel="response tokens per request", ylabel="wall seconds")
    if any(r["peak_rss_bytes"] for r in rows):
        report.bars(out_dir / "scaling_rss.png", [r["label"] for r in rows],
                    [(r["peak_rss_bytes"] or 0) / 2**30 for r in rows],
                    title="Peak RSS of the server and its children", ylabel="GiB")
    return data


def print_table(data: dict) -> None:
    rows = [{"request": r["label"], "resp tokens": r["response_tokens"], "wall s": r["wall_s"],
             "resp tok/s": r["response_tok_s"], "x smallest": r["tok_s_vs_smallest"],
             "scored tok/s": r["scored_tok_s"], "x engine": r["scored_vs_engine"],
             "peak RSS GiB": r["peak_rss_bytes"] and r["peak_rss_bytes"] / 2**30}
            for r in data["results"]]
    print(report.table(f"scaling (baseline: {data['baseline']}; x engine: scored tok/s over the "
                       "raw engine's)", rows, list(rows[0])))
    fit = data["fit_seconds_vs_response_tokens"]
    if fit.get("slope"):
        print(f"seconds = {fit['slope'] * 1000:.3f} ms/token x tokens + {fit['intercept']:.2f} s; "
              f"R² = {fit['r2']:.4f} over {fit['points']} requests")
    fit2 = data.get("fit_seconds_vs_tokens_and_rollouts") or {}
    if fit2.get("coef"):
        c = fit2["coef"]
        print(f"seconds = {c['response_tokens'] * 1000:.3f} ms/token + {c['rollouts']:.3f} s/rollout "
              f"+ {fit2['intercept']:.2f} s; R² = {fit2['r2']:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--base-url", help="a running amr-sd (no memory figures); default: start one")
    args = parser.parse_args()
    if args.base_url:
        print_table(run(args.out, args.base_url, quick=args.quick))
    else:
        with procs.amr_server(args.out / "logs", env=procs.NO_SCORE_CACHE) as server:
            print_table(run(args.out, server.base_url, server.pid, quick=args.quick))
