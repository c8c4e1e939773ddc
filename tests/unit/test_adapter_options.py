"""Specification of the options every trainer adapter shares (`amr_client.integrations.options`):
one name per option across adapters, the old names still working with a DeprecationWarning."""

from __future__ import annotations

import warnings

import httpx
import pytest

from amr_client import AMRClient, ReplicaClient
from amr_client.integrations.options import renamed, scoring_client


def test_the_new_name_is_used_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed("amr_fallback_to_grpo", True, "fallback_to_grpo", None, False) is True


def test_the_old_name_still_works_and_warns():
    with pytest.warns(DeprecationWarning, match="pass amr_fallback_to_grpo= instead"):
        assert renamed("amr_fallback_to_grpo", False, "fallback_to_grpo", True, False) is True


def test_both_names_at_once_are_refused():
    with pytest.raises(TypeError, match="pass only amr_fallback_to_grpo="):
        renamed("amr_fallback_to_grpo", True, "fallback_to_grpo", True, False)


def test_a_passed_client_is_used_as_is():
    client = AMRClient("http://scorer.test")
    assert scoring_client(client, None, None, 600.0) is client


def test_a_url_makes_a_client_with_a_long_read_and_a_short_connect():
    client = scoring_client(None, "http://scorer.test", "sk", 120.0)
    assert (client.base_url, client.api_key) == ("http://scorer.test", "sk")
    assert client.timeout == httpx.Timeout(120.0, connect=5.0)


def test_a_list_of_urls_makes_a_replica_client():
    client = scoring_client(None, ["http://a.test:8000", "http://b.test:8000"], "sk", 120.0)
    try:
        assert isinstance(client, ReplicaClient)
        assert client.replicas() == ["http://a.test:8000", "http://b.test:8000"]
        assert client._pool._known["http://a.test:8000"].client.timeout == httpx.Timeout(120.0, connect=5.0)
    finally:
        client.close()


def test_a_client_and_a_url_together_or_neither_are_refused():
    with pytest.raises(TypeError, match="not both"):
        scoring_client(AMRClient(), "http://scorer.test", None, 600.0)
    with pytest.raises(TypeError, match="amr_url="):
        scoring_client(None, None, None, 600.0)
