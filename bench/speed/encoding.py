"""What the score response costs on the wire: JSON against compact float32 forms.

A large batch (512 rollouts x 1024 tokens) carries three per-token arrays per rollout. JSON
spells every float64 as ~20 characters of decimal text and both ends parse it back; a float32
array is 4 bytes per value. The question is how much of a request's time JSON takes, and what a
binary form would save; the baseline is orjson on the plain dict, what the server writes now.

Every encoder starts from the same wire dict (`ScoreResponse.model_dump(mode="json")`, lists of
Python floats), so the binary forms pay the list -> array conversion too. JSON decoders return
lists; binary decoders return numpy arrays, which is what a trainer turns the lists into anyway.
float32 keeps ~7 significant digits: the JSON records the largest round-trip error.
"""

from __future__ import annotations

import argparse
import base64
import gc
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from bench.common import host, report

ARRAYS = ("advantages", "cig")  # float arrays; `gated` is a bool array


@dataclass(frozen=True)
class Sizes:
    rollouts: int
    tokens: int
    group_size: int
    repeats: int


FULL = Sizes(rollouts=512, tokens=1024, group_size=8, repeats=5)
QUICK = Sizes(rollouts=128, tokens=1024, group_size=8, repeats=3)


def make_response(sizes: Sizes, seed: int = 0) -> dict:
    """A valid ScoreResponse as a dict, with values shaped like real ones: GRPO advantages of a
    mixed group, CIG ~ N(-0.16, 0.73) clipped to [-5, 5] (the demo's figures), ~5% of tokens
    gated, where the advantage is scaled; elsewhere it is the rollout's base advantage."""
    rng = random.Random(seed)
    rewards = [1.0 if i % 2 == 0 else 0.0 for i in range(sizes.group_size)]
    mean = sum(rewards) / len(rewards)
    std = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5
    groups = []
    for _ in range(sizes.rollouts // sizes.group_size):
        rollouts = []
        for reward in rewards:
            base = (reward - mean) / (std + 1e-6)
            cig = [max(-5.0, min(5.0, rng.gauss(-0.157, 0.725))) for _ in range(sizes.tokens)]
            gated = [abs(c) > 1.4 and rng.random() < 0.5 for c in cig]
            advantages = [base * (1 + 0.2 * (abs(c) - 1.0)) if g else base for c, g in zip(cig, gated)]
            rollouts.append({
                "advantages": advantages, "base_advantage": base, "cig": cig, "gated": gated,
                "reflection": {"kind": "hint" if base > 0 else "critique",
                               "text": "Check each addition step before stating the sum.",
                               "accepted": True, "attempts": 1, "source": "override"},
            })
        groups.append({"rollouts": rollouts})
    n_tokens = sizes.rollouts * sizes.tokens
    stats = {"groups": len(groups), "rollouts": sizes.rollouts, "response_tokens": n_tokens,
             "tokens_scored": 2 * n_tokens, "reflected_tokens": n_tokens,
             "gated_tokens": n_tokens // 20, "gate_rate": 0.05,
             "reflections_requested": sizes.rollouts, "reflections_generated": 0,
             "reflections_accepted": sizes.rollouts, "reflections_rejected": 0,
             "acceptance_rate": 1.0, "cig_mean": 0.0, "cig_std": 2.9, "nonfinite_cig": 0,
             "mean_abs_base_advantage": 0.866, "mean_abs_advantage": 0.87}
    return {"model": "smollm2-135m-instruct", "policy_version": "base", "template_version": "1",
            "step": 0, "anneal_weight": 1.0, "groups": groups, "stats": stats}


# --------------------------------------------------------------------------------------------
# Codecs: (encode: wire dict -> bytes, decode: bytes -> object a client uses)
# --------------------------------------------------------------------------------------------


def _f32(values: list[float]) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def _bits(values: list[bool]) -> bytes:
    return np.packbits(np.asarray(values, dtype=bool)).tobytes()


def _pack_arrays(wire: dict, to_text: bool) -> dict:
    """The wire dict with per-token arrays as raw float32 / packed bits (base64 for JSON)."""
    wrap = (lambda b: base64.b64encode(b).decode("ascii")) if to_text else (lambda b: b)
    groups = []
    for g in wire["groups"]:
        rollouts = []
        for r in g["rollouts"]:
            packed = dict(r)
            for name in ARRAYS:
                packed[name] = wrap(_f32(r[name]))
            packed["gated"] = wrap(_bits(r["gated"]))
            packed["tokens"] = len(r["advantages"])  # packed bits round up to whole bytes
            rollouts.append(packed)
        groups.append({"rollouts": rollouts})
    return {**wire, "groups": groups, "encoding": "float32-le"}


def _unpack_arrays(body: dict, from_text: bool) -> dict:
    unwrap = base64.b64decode if from_text else (lambda b: b)
    for g in body["groups"]:
        for r in g["rollouts"]:
            for name in ARRAYS:
                r[name] = np.frombuffer(unwrap(r[name]), dtype="<f4")
            r["gated"] = np.unpackbits(np.frombuffer(unwrap(r["gated"]), dtype=np.uint8),
                                       count=r["tokens"]).astype(bool)
    return body


def codecs() -> dict[str, tuple[Callable, Callable]]:
    from amr_client.schemas import ScoreResponse

    found = {
        "orjson": (orjson.dumps, orjson.loads),
        # What the server and the SDK do: build the model (validation), dump it, encode; the
        # SDK validates every field on arrival.
        "orjson + pydantic": (lambda w: orjson.dumps(ScoreResponse.model_validate(w).model_dump(mode="json")),
                              ScoreResponse.model_validate_json),
        "orjson, base64 float32": (lambda w: orjson.dumps(_pack_arrays(w, to_text=True)),
                                   lambda b: _unpack_arrays(orjson.loads(b), from_text=True)),
    }
    import msgpack

    from amr_client.binary import decode_response, encode_response

    found["msgpack"] = (msgpack.packb, msgpack.unpackb)
    # The service's compact answer (Accept: application/msgpack), as the server writes it and
    # as the SDK reads it: arrays back to lists, then the same validation as JSON.
    found["application/msgpack"] = (encode_response, lambda b: decode_response(b, as_lists=False))
    found["application/msgpack + pydantic"] = (
        lambda w: encode_response(ScoreResponse.model_validate(w).model_dump(mode="json")),
        lambda b: ScoreResponse.model_validate(decode_response(b)))
    return found


def _best_of(fn: Callable, arg, repeats: int) -> tuple[float, object]:
    """Fastest of `repeats` calls, garbage collector off: its pauses would dominate the spread."""
    best, result = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            began = time.perf_counter()
            result = fn(arg)
            best = min(best, time.perf_counter() - began)
        finally:
            gc.enable()
    return best, result


def _max_error(wire: dict, decoded) -> float:
    if hasattr(decoded, "groups"):  # a ScoreResponse model
        decoded = decoded.model_dump()
    worst = 0.0
    for g0, g1 in zip(wire["groups"], decoded["groups"]):
        for r0, r1 in zip(g0["rollouts"], g1["rollouts"]):
            for name in ARRAYS:
                worst = max(worst, float(np.max(np.abs(np.asarray(r0[name]) - np.asarray(r1[name], dtype=float)))))
            if not np.array_equal(np.asarray(r0["gated"]), np.asarray(r1["gated"])):
                raise AssertionError("gated bits did not survive the round trip")
    return worst


def run(out_dir: Path, quick: bool = False) -> dict:
    from amr_client.schemas import ScoreResponse

    sizes = QUICK if quick else FULL
    print(f"encoding ({'quick' if quick else 'full'}): {sizes.rollouts} rollouts x {sizes.tokens} tokens",
          flush=True)
    wire = ScoreResponse.model_validate(make_response(sizes)).model_dump(mode="json")
    rows = []
    for name, (encode, decode) in codecs().items():
        enc_s, body = _best_of(encode, wire, sizes.repeats)
        dec_s, decoded = _best_of(decode, body, sizes.repeats)
        rows.append({"codec": name, "bytes": len(body), "encode_s": enc_s, "decode_s": dec_s,
                     "total_s": enc_s + dec_s, "max_abs_error": _max_error(wire, decoded)})
    base = rows[0]
    for r in rows:
        r["bytes_vs_orjson"] = report.ratio(r["bytes"], base["bytes"])
        r["time_vs_orjson"] = report.ratio(r["total_s"], base["total_s"])
    data = {"part": "encoding", "quick": quick, "sizes": asdict(sizes),
            "per_token_values": sizes.rollouts * sizes.tokens * 3, "baseline": "orjson",
            "load": host.load(), "results": rows}
    report.write_json(out_dir / "encoding.json", data)
    labels = [r["codec"] for r in rows]
    report.bars(out_dir / "encoding_time.png", labels, [r["total_s"] for r in rows],
                title=f"Score response encode + decode ({sizes.rollouts} x {sizes.tokens} tokens)",
                ylabel="seconds (best of repeats)", baseline="orjson")
    report.bars(out_dir / "encoding_bytes.png", labels, [r["bytes"] / 2**20 for r in rows],
                title="Score response size", ylabel="MiB", baseline="orjson")
    return data


def print_table(data: dict) -> None:
    print(report.table("encoding (baseline: orjson)", [
        {"codec": r["codec"], "MiB": r["bytes"] / 2**20, "x bytes": r["bytes_vs_orjson"],
         "encode s": r["encode_s"], "decode s": r["decode_s"], "x time": r["time_vs_orjson"],
         "max err": r["max_abs_error"]} for r in data["results"]],
        ["codec", "MiB", "x bytes", "encode s", "decode s", "x time", "max err"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    print_table(run(args.out, quick=args.quick))
