"""Optional API keys: `Authorization: Bearer <key>` against `AMR_API_KEYS`."""

from __future__ import annotations

import hmac

from amr_sd.errors import Forbidden, Unauthenticated


def check_bearer(authorization: str | None, keys: list[bytes]) -> None:
    """Return if the header carries one of `keys`; 401 without a bearer token, 403 for another."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("this service needs an API key: send `Authorization: Bearer <key>`")
    given = token.strip().encode()
    # compare_digest on every key, without stopping at a match: the time taken says nothing
    # about which key, or how much of one, was right.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    if not matched:
        raise Forbidden("the API key is not valid for this service")
