"""One load-generating client process for tests/e2e/test_load.py.

    python tests/e2e/loadgen.py --base-url URL --requests in.jsonl --out results.jsonl --threads 8

Each input line is `{"id", "kind", "body"}`. `body` holds `groups`, `step` and optionally `config`
and is sent through `AMRClient.score` (retries on: 429/5xx honouring Retry-After, one
Idempotency-Key per request), except when `raw` is true: then it is POSTed as is with httpx, for
bodies the client itself refuses to build (a rollout without a reward). Each request gets exactly
one output line once it has a final outcome: `{"id", "kind", "status", "seconds"}` plus
`anneal_weight` and `advantages` (per group, per rollout) for a 200, or `error` ({type, message,
field}) otherwise. Lines are flushed as they are written, so a process killed mid-run still
leaves the outcomes it had: a missing id is a lost request.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from amr_client import AMRClient, APIConnectionError, APIStatusError

# Enough tries to outlast a full admission queue on 2 CPU cores; Retry-After paces them.
MAX_RETRIES = 30
RAW_RETRYABLE = {429, 503}


def score_with_client(client: AMRClient, body: dict) -> dict:
    try:
        result = client.score(body["groups"], step=body["step"], config=body.get("config"))
    except APIStatusError as exc:
        return {"status": exc.status_code,
                "error": {"type": exc.type, "message": exc.message, "field": exc.field}}
    except APIConnectionError as exc:
        return {"status": None, "error": {"type": type(exc).__name__, "message": str(exc)}}
    return {"status": 200, "anneal_weight": result.anneal_weight,
            "advantages": [[r.advantages for r in g.rollouts] for g in result.groups]}


def score_raw(http: httpx.Client, base_url: str, body: dict) -> dict:
    # The client validates bodies before sending, so a body it refuses goes out through httpx,
    # retrying, as the client would, the statuses that mean "later".
    for _ in range(MAX_RETRIES + 1):
        response = http.post(f"{base_url}/v1/score", json=body, timeout=120)
        if response.status_code not in RAW_RETRYABLE:
            break
        time.sleep(min(float(response.headers.get("retry-after", 1)), 60.0))
    out: dict = {"status": response.status_code}
    try:
        out["error"] = response.json().get("error")
    except ValueError:
        out["error"] = {"type": None, "message": response.text[:500]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    requests = [json.loads(line) for line in args.requests.read_text().splitlines() if line]
    lock = threading.Lock()
    with AMRClient(args.base_url, max_retries=MAX_RETRIES) as client, httpx.Client() as http, \
            open(args.out, "w") as out:

        def one(request: dict) -> None:
            start = time.monotonic()
            try:
                if request.get("raw"):
                    outcome = score_raw(http, args.base_url, request["body"])
                else:
                    outcome = score_with_client(client, request["body"])
            except Exception as exc:  # recorded, not raised: every request gets an outcome line
                outcome = {"status": None, "error": {"type": type(exc).__name__, "message": str(exc)}}
            line = {"id": request["id"], "kind": request["kind"], **outcome,
                    "seconds": round(time.monotonic() - start, 3)}
            with lock:
                out.write(json.dumps(line) + "\n")
                out.flush()

        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(one, requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
