"""Options every trainer adapter takes under the same names: `amr_client=` (or `amr_url=`) and
`amr_fallback_to_grpo=`, with the old names kept working, warned, for a release."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import httpx

from amr_client import AMRClient, ReplicaClient


def renamed(new_name: str, new_value: Any, old_name: str, old_value: Any, default: Any) -> Any:
    """The option's value, given under `new_name` or its deprecated `old_name` (None: not given)."""
    if old_value is None:
        return new_value
    if new_value != default:
        raise TypeError(f"{old_name}= is the old name of {new_name}=: pass only {new_name}=")
    warnings.warn(f"{old_name}= is deprecated, pass {new_name}= instead", DeprecationWarning,
                  stacklevel=3)
    return old_value


def scoring_client(amr_client: AMRClient | ReplicaClient | None, amr_url: str | Sequence[str] | None,
                   amr_api_key: str | None, amr_timeout_s: float) -> AMRClient | ReplicaClient:
    """`amr_client` as given, or one made from `amr_url` (a read timeout of `amr_timeout_s`,
    5 s to connect): an `AMRClient` for one URL, a `ReplicaClient` spreading each batch over
    them for a list of URLs. The settings of a passed client are its own, so the two forms
    exclude each other."""
    if amr_client is not None:
        if amr_url is not None or amr_api_key is not None:
            raise TypeError("pass amr_client= or amr_url= (with amr_api_key=), not both: "
                            "the client already holds its URL and key")
        return amr_client
    if amr_url is None:
        raise TypeError('name the service: amr_url="http://scorer:8000" or amr_client=AMRClient(...)')
    timeout = httpx.Timeout(amr_timeout_s, connect=5.0)
    if isinstance(amr_url, (list, tuple)):
        return ReplicaClient(list(amr_url), api_key=amr_api_key, timeout=timeout)
    return AMRClient(amr_url, api_key=amr_api_key, timeout=timeout)
