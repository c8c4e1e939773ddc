"""The request guards' pure logic: admission, idempotency, API keys, the deadline header."""

from __future__ import annotations

import asyncio

import pytest

from amr_client.schemas import ScoreRequest
from amr_sd.guards.admission import Admission, request_size
from amr_sd.guards.auth import check_bearer
from amr_sd.api.http_common import request_timeout
from amr_sd.guards.idempotency import Claim, MemoryStore, Stored, scoped_key
from amr_sd.config import Settings
from amr_sd.errors import Conflict, Forbidden, InvalidRequest, Overloaded, PayloadTooLarge, Unauthenticated


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# --- admission -----------------------------------------------------------------------------------


def test_admission_refuses_over_the_pending_bound_with_429_and_takes_it_back_on_release():
    admission = Admission(max_sequences=8, max_tokens=1000)
    first = admission.admit(6, 100)
    with pytest.raises(Overloaded) as err:
        admission.admit(4, 100)  # 6 + 4 > 8
    assert err.value.status_code == 429 and "Retry-After" in err.value.headers
    admission.release(first, completed=True)
    admission.admit(4, 100)
    assert (admission.pending_sequences, admission.pending_tokens) == (4, 100)


def test_a_request_larger_than_a_whole_bound_is_413_not_429():
    admission = Admission(max_sequences=8, max_tokens=1000)
    with pytest.raises(PayloadTooLarge, match="1001 response tokens .* the pending-work cap is 1000"):
        admission.admit(1, 1001)


def test_retry_after_is_the_backlog_over_the_recent_drain_rate():
    clock = Clock()
    admission = Admission(max_sequences=100, max_tokens=1000, clock=clock)
    assert admission.retry_after_s() == 5  # nothing drained yet: the default guess
    done = admission.admit(1, 200)
    clock.now += 10
    admission.release(done, completed=True)  # 200 tokens answered at t = 1010
    clock.now += 9
    admission.admit(10, 900)
    # 200 tokens drained over the 9 s since -> 22.2 tokens/s; 900 pending -> ceil(40.5) = 41 s
    assert admission.retry_after_s() == 41
    clock.now += 120  # the drain is older than the window: back to the default
    assert admission.retry_after_s() == 5


def test_retry_after_is_capped_at_60_s():
    clock = Clock()
    admission = Admission(max_sequences=100, max_tokens=10**6, clock=clock)
    admission.release(admission.admit(1, 1), completed=True)
    clock.now += 1
    admission.admit(1, 10**6)
    assert admission.retry_after_s() == 60


def a_request(groups: int, rollouts: int, tokens: int) -> ScoreRequest:
    group = {"prompt": {"messages": [{"role": "user", "content": "1 + 1 ="}]},
             "rollouts": [{"token_ids": [7] * tokens, "reward": float(r % 2)} for r in range(rollouts)]}
    return ScoreRequest.model_validate({"step": 0, "groups": [group] * groups})


def test_request_size_counts_rollouts_and_response_tokens():
    assert request_size(a_request(2, 3, 5), 8, 8, 100) == (6, 30)  # 2 x 3 rollouts of 5 tokens


@pytest.mark.parametrize("caps, message", [((1, 8, 100), "2 groups in one request; the cap is 1"),
                                           ((8, 5, 100), "6 rollouts in one request; the cap is 5"),
                                           ((8, 8, 29), "30 response tokens in one request; the cap is 29")])
def test_over_a_size_cap_is_413_naming_the_cap(caps, message):
    with pytest.raises(PayloadTooLarge) as err:
        request_size(a_request(2, 3, 5), *caps)
    assert (err.value.message, err.value.field) == (message, "groups")


# --- idempotency ---------------------------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


def test_a_finished_key_replays_the_stored_answer():
    store = MemoryStore(ttl_s=60)
    assert run(store.begin("k", "fp")) is None
    run(store.finish("k", "fp", 200, b'{"a":1}'))
    assert run(store.begin("k", "fp")) == Stored(200, b'{"a":1}')


def test_a_key_in_flight_is_409():
    store = MemoryStore(ttl_s=60)
    run(store.begin("k", "fp"))
    with pytest.raises(Conflict):
        run(store.begin("k", "fp"))


def test_a_key_reused_with_another_body_is_422_naming_the_header():
    store = MemoryStore(ttl_s=60)
    run(store.begin("k", "fp1"))
    with pytest.raises(InvalidRequest) as err:
        run(store.begin("k", "fp2"))
    assert err.value.field == "Idempotency-Key"


def test_a_released_key_runs_again():
    store = MemoryStore(ttl_s=60)
    run(store.begin("k", "fp"))
    run(store.release("k"))
    assert run(store.begin("k", "fp")) is None


def test_an_expired_answer_is_forgotten():
    clock = Clock()
    store = MemoryStore(ttl_s=60, clock=clock)
    run(store.begin("k", "fp"))
    run(store.finish("k", "fp", 200, b"x"))
    clock.now += 61
    assert run(store.begin("k", "fp")) is None


def test_the_oldest_answers_go_first_over_the_byte_bound():
    store = MemoryStore(ttl_s=60, max_bytes=10)
    for key in ("a", "b", "c"):
        run(store.begin(key, "fp"))
        run(store.finish(key, "fp", 200, b"12345"))
    assert run(store.begin("a", "fp")) is None  # evicted: 15 bytes > 10
    assert run(store.begin("c", "fp")) == Stored(200, b"12345")


def test_keys_are_scoped_by_api_key_and_bounded():
    assert scoped_key("k", "Bearer a") != scoped_key("k", "Bearer b")
    assert scoped_key("k", None) == scoped_key("k", None)
    with pytest.raises(InvalidRequest) as err:
        scoped_key("x" * 201, None)
    assert err.value.field == "Idempotency-Key"


def test_a_claim_without_a_key_touches_no_store():
    claim = run(Claim.begin(None, None, "Bearer a", "fp"))
    assert (claim.key, claim.stored) == (None, None)
    run(claim.keep(200, b"{}"))
    run(claim.settle(Overloaded("full")))


def test_a_kept_answer_is_what_the_next_claim_replays():
    store = MemoryStore(ttl_s=60)
    run(run(Claim.begin(store, "k", "Bearer a", "fp")).keep(200, b'{"a":1}'))
    again = run(Claim.begin(store, "k", "Bearer a", "fp"))
    assert again.stored == Stored(200, b'{"a":1}') and again.kept  # a replay settles nothing


def test_a_final_error_is_kept_for_replay_as_its_envelope():
    store = MemoryStore(ttl_s=60)
    claim = run(Claim.begin(store, "k", None, "fp"))
    run(claim.settle(PayloadTooLarge("too big", field="groups")))
    stored = run(Claim.begin(store, "k", None, "fp")).stored
    assert stored.status == 413 and b'"too big"' in stored.body


@pytest.mark.parametrize("exc", [Overloaded("full"), asyncio.CancelledError(), None])
def test_an_error_a_retry_could_change_frees_the_key(exc):
    store = MemoryStore(ttl_s=60)
    run(run(Claim.begin(store, "k", None, "fp")).settle(exc))
    assert run(Claim.begin(store, "k", None, "fp")).stored is None  # claimed afresh, not 409


def test_a_claim_settles_once():
    store = MemoryStore(ttl_s=60)
    claim = run(Claim.begin(store, "k", None, "fp"))
    run(claim.keep(200, b"{}"))
    run(claim.settle(Overloaded("full")))  # after keep: the stored answer stays
    assert run(Claim.begin(store, "k", None, "fp")).stored == Stored(200, b"{}")


# --- API keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "k1"])
def test_no_bearer_token_is_401(header):
    with pytest.raises(Unauthenticated):
        check_bearer(header, [b"k1"])


def test_a_wrong_bearer_token_is_403():
    with pytest.raises(Forbidden):
        check_bearer("Bearer k3", [b"k1", b"k2"])


def test_any_configured_key_passes():
    check_bearer("Bearer k2", [b"k1", b"k2"])
    check_bearer("bearer k1", [b"k1", b"k2"])


def test_api_keys_come_comma_separated_and_stay_secret():
    settings = Settings(api_keys="k1, k2,")
    assert settings.keys() == [b"k1", b"k2"]
    assert "k1" not in repr(settings)


# --- deadline header -----------------------------------------------------------------------------


def test_the_deadline_defaults_to_the_setting_and_takes_the_header():
    settings = Settings(request_timeout_s=600, max_request_timeout_s=3600)
    assert request_timeout(None, settings) == 600
    assert request_timeout("2.5", settings) == 2.5


@pytest.mark.parametrize("header", ["abc", "0", "-1", "nan", "3601", "inf"])
def test_a_bad_deadline_header_is_422_naming_it(header):
    with pytest.raises(InvalidRequest) as err:
        request_timeout(header, Settings(max_request_timeout_s=3600))
    assert err.value.field == "X-Request-Timeout"
