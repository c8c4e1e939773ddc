"""HTTP (JSON answer, msgpack answer) vs gRPC on one `amr-sd serve --grpc-port` process: time
and bytes for the same request.

Two 64-group requests, each sent over both transports in turn (alternating, so drift on a noisy
machine hits both alike), measured from the caller's side: encode, send, wait, decode to plain
data. The bytes are the request and answer messages (JSON body, protobuf message), without
HTTP/2 or HTTP/1.1 framing.

- transport only: 64 groups x G 8 x 256 tokens at a step where the anneal weight is 0, so the
  answer is GRPO with no engine work: what remains is validation, the request path, encoding
  and the wire;
- scoring only: 64 groups x G 2 x 16 tokens whose rollouts carry `reflection_override`, so the
  engine runs both scoring passes and no reflection writing.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import grpc
import httpx
import orjson

from bench.common import corpus, report

SIZES = {"transport only": (64, 8, 256, 10_000), "scoring only": (64, 2, 16, 0)}
# transport -> the answer type asked for (gRPC has its own packed protobuf answer)
TRANSPORTS = {"http": "application/json", "http msgpack": "application/msgpack", "grpc": None}


def _over_http(base_url: str, body: dict, accept: str = "application/json") -> tuple[float, int, int, dict]:
    from amr_client.binary import MSGPACK, decode_response

    began = time.perf_counter()
    payload = orjson.dumps(body)
    r = httpx.post(f"{base_url}/v1/score", content=payload, timeout=1800,
                   headers={"Content-Type": "application/json", "Accept": accept})
    r.raise_for_status()
    answer = decode_response(r.content) if accept == MSGPACK else orjson.loads(r.content)
    return time.perf_counter() - began, len(payload), len(r.content), answer


def _over_grpc(stub, body: dict) -> tuple[float, int, int, dict]:
    from amr_client.grpc_codec import fill, to_dict
    from amr_client.v1 import scoring_pb2 as pb

    began = time.perf_counter()
    message = fill(pb.ScoreRequest(), body)
    answer = stub.Score(message, timeout=1800)
    data = to_dict(answer)
    return time.perf_counter() - began, message.ByteSize(), answer.ByteSize(), data


def run(out_dir: Path, base_url: str, grpc_target: str, quick: bool = False) -> dict:
    from amr_client.v1 import scoring_pb2_grpc as pb_grpc

    tokenizer = corpus.load_tokenizer()
    repeats = {"transport only": 3 if quick else 7, "scoring only": 1 if quick else 2}
    results = []
    with grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", -1),
                                                     ("grpc.max_send_message_length", -1)]) as ch:
        stub = pb_grpc.ScoringStub(ch)
        for name, (n, size, length, step) in SIZES.items():
            body = {"groups": corpus.groups(tokenizer, n, size, length), "step": step,
                    "return": {"reflections": False}}
            grpc_body = {**{k: v for k, v in body.items() if k != "return"}, "returns": body["return"]}
            _over_http(base_url, body)  # warm both paths (and the engine) before timing
            _over_grpc(stub, grpc_body)
            times = {t: [] for t in TRANSPORTS}
            sizes = {}
            for _ in range(repeats[name]):
                for transport in TRANSPORTS:
                    if transport == "grpc":
                        t, sent, got, answer = _over_grpc(stub, grpc_body)
                    else:
                        t, sent, got, answer = _over_http(base_url, body, TRANSPORTS[transport])
                    times[transport].append(t)
                    sizes[transport] = (sent, got)
                    assert len(answer["groups"]) == n
            for transport in TRANSPORTS:
                results.append({
                    "request": name, "transport": transport, "groups": n, "size": size,
                    "length": length, "response_tokens": n * size * length,
                    "repeats": repeats[name], "median_s": statistics.median(times[transport]),
                    "times_s": times[transport], "request_bytes": sizes[transport][0],
                    "answer_bytes": sizes[transport][1]})
    for r in results:
        http = next(x for x in results if x["request"] == r["request"] and x["transport"] == "http")
        r["time_vs_http"] = report.ratio(r["median_s"], http["median_s"])
        r["bytes_vs_http"] = report.ratio(r["request_bytes"] + r["answer_bytes"],
                                          http["request_bytes"] + http["answer_bytes"])
    data = {"baseline": "HTTP (JSON, orjson) on the same server, alternating", "results": results}
    report.write_json(out_dir / "transport.json", data)
    return data


def print_table(data: dict) -> None:
    rows = [{"request": f"{r['request']} ({r['groups']}x{r['size']}x{r['length']})",
             "transport": r["transport"], "median s": r["median_s"], "x http time": r["time_vs_http"],
             "request MiB": r["request_bytes"] / 2**20, "answer MiB": r["answer_bytes"] / 2**20,
             "x http bytes": r["bytes_vs_http"]} for r in data["results"]]
    print(report.table(f"transport (baseline: {data['baseline']})", rows, list(rows[0])))
