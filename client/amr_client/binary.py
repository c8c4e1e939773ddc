"""The compact score answer: `Accept: application/msgpack`.

The same document as the JSON answer (same keys, same nesting), written as MessagePack, except
that every per-token array of a scored rollout is one msgpack `bin` of little-endian values:
float32 for the float arrays, one uint8 (0 or 1) per token for `gated`. JSON spells each float
as ~20 characters and both ends parse them; here a token costs 4 bytes (1 for `gated`) and the
arrays are copied, not parsed. float32 keeps ~7 significant digits, what a trainer's advantage
tensor holds anyway; the JSON answer keeps float64.

Both ends use this module: the server to write, the SDK to read, so the format lives in one place.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

MSGPACK = "application/msgpack"
# Names a client may use for the same thing; the server answers with MSGPACK.
MSGPACK_ALIASES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

FLOAT_ARRAYS = ("advantages", "cig", "student_logprobs", "teacher_logprobs")
BOOL_ARRAYS = ("gated",)
_FLOAT = np.dtype("<f4")
_BOOL = np.dtype("u1")


def _pack_rollout(rollout: dict[str, Any]) -> dict[str, Any]:
    packed = dict(rollout)
    for name in FLOAT_ARRAYS:
        if packed.get(name) is not None:
            packed[name] = np.asarray(packed[name], dtype=_FLOAT).tobytes()
    for name in BOOL_ARRAYS:
        if packed.get(name) is not None:
            packed[name] = np.asarray(packed[name], dtype=_BOOL).tobytes()
    return packed


def encode_response(answer: dict[str, Any]) -> bytes:
    """A score answer (the JSON document as a dict) as msgpack with packed per-token arrays."""
    groups = [{**g, "rollouts": [_pack_rollout(r) for r in g["rollouts"]]} for g in answer["groups"]]
    return msgpack.packb({**answer, "groups": groups}, use_bin_type=True)


def _unpack(buffer: Any, dtype: np.dtype, name: str) -> np.ndarray:
    if not isinstance(buffer, bytes) or len(buffer) % dtype.itemsize:
        raise ValueError(f"{name}: expected msgpack bin of {dtype.itemsize}-byte values, "
                         f"got {type(buffer).__name__}")
    return np.frombuffer(buffer, dtype=dtype)


def decode_response(payload: bytes, as_lists: bool = True) -> dict[str, Any]:
    """The dict `encode_response` was given, arrays as lists of Python floats/bools (or numpy
    arrays with `as_lists=False`). Raises ValueError for a body that is not such an answer."""
    try:
        answer = msgpack.unpackb(payload, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise ValueError(f"not a msgpack document: {exc}") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("groups"), list):
        raise ValueError("not a score answer: no `groups` list")
    for g, group in enumerate(answer["groups"]):
        for r, rollout in enumerate(group.get("rollouts", [])):
            where = f"groups[{g}].rollouts[{r}]"
            for names, dtype in ((FLOAT_ARRAYS, _FLOAT), (BOOL_ARRAYS, _BOOL)):
                for name in names:
                    if rollout.get(name) is None:
                        continue
                    array = _unpack(rollout[name], dtype, f"{where}.{name}")
                    if dtype is _BOOL:
                        array = array.astype(bool)
                    rollout[name] = array.tolist() if as_lists else array
    return answer
