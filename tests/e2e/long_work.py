"""Requests that keep the engine busy for seconds on any machine, whatever a writer would do.

A test that needs a request still in flight when something happens (a deadline, a client that
leaves, a drain timeout) cannot rely on reflection writing: the embedded model often begins with
"The final answer", the writer is stopped at once, and a whole group was answered in 2.2 s on a
fast AMX machine, past a 2 s drain timeout. Scoring-only work is sized by tokens instead.
"""

from __future__ import annotations

# Response tokens a rollout: 2 x 4 x 1500 = 12,000 scored rows a group, 4.6 s at the fastest
# scoring seen here (2,600 tok/s, bf16 on an AMX Xeon) and about 30 s at 400 tok/s.
LONG_RESPONSE_TOKENS = 1500


def long_scoring(groups: list[dict], tokens: int = LONG_RESPONSE_TOKENS) -> list[dict]:
    """The groups as scoring-only work: every rollout brings its reflection, and its response
    repeats its own token ids up to `tokens`."""
    return [{**g, "rollouts": [
        {**r, "reflection_override": "Check each step once more.",
         "token_ids": (r["token_ids"] * (tokens // len(r["token_ids"]) + 1))[:tokens]}
        for r in g["rollouts"]]} for g in groups]
