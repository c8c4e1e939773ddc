"""`AMRClient` and `AsyncAMRClient`: the same methods, blocking and async.

Both only send requests; building bodies, parsing responses, mapping statuses to exceptions,
streams, `with_options` and closing live in `_base.py`, retries in `_retries.py`.

    with AMRClient("http://scorer:8000") as client:
        result = client.score(groups, step=global_step)
        advantages, mask = result.advantages_padded()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from amr_client._base import (
    NDJSON,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    INFO_PATH,
    POLICY_PATH,
    READY_PATH,
    SCORE_PATH,
    AsyncBaseClient,
    BaseClient,
    Encoding,
    StreamAssembler,
    SyncBaseClient,
    answer_type,
    build_headers,
    build_policy_body,
    build_score_body,
    check_base_url,
    check_max_retries,
    http_errors,
    make_status_error,
    new_idempotency_key,
    parse_info,
    parse_policy_status,
    parse_ready,
    parse_score_response,
    raise_for_status,
    retry_as_json,
)
from amr_client._exceptions import APIStatusError
from amr_client._retries import retried, retried_aitems, retried_async, retried_items
from amr_client.results import ScoreResult
from amr_client.streams import AsyncScoreStream, Progress, ScoreStream
from amr_client.schemas import Group, PolicyRef, PolicyStatus, ReturnSwitches, ScoringConfig

__all__ = ["AMRClient", "AsyncAMRClient"]


class _HttpClient(BaseClient):
    """Settings of an HTTP client (a base URL, a timeout held as an httpx.Timeout) and its pool: `http_client`, or
    a `pool_class` made here on `transport` (and closed by `close`)."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float | httpx.Timeout | None,
                 max_retries: int, transport: Any, http_client: Any, pool_class: type):
        self.base_url = check_base_url(base_url)
        self.api_key = api_key
        self.timeout = self._check_timeout(timeout)
        self.max_retries = check_max_retries(max_retries)
        if transport is not None and http_client is not None:
            raise ValueError("pass either transport= or http_client=, not both "
                             "(set the transport on your http_client instead)")
        if http_client is not None and not isinstance(http_client, pool_class):
            expected = f"{pool_class.__module__}.{pool_class.__name__}"
            raise TypeError(f"http_client must be an {expected}, got {type(http_client).__name__}")
        self._owns_connection = http_client is None
        self._http = http_client if http_client is not None else pool_class(transport=transport)

    def _url(self, path: str) -> str:
        return self.base_url + path


class AMRClient(_HttpClient, SyncBaseClient):
    """Blocking client of an amr-sd server.

    Args:
        base_url: the server, e.g. "http://scorer:8000" ("http://scorer:8000/v1", the form
            openai-python takes, means the same server).
        api_key: sent as `Authorization: Bearer <api_key>` when set; None or "" sends none.
        timeout: per try, as httpx takes it: seconds for every phase (a float), None for no
            limit, or an httpx.Timeout. The default waits up to 600 s for a response (big CPU
            batches) but only 5 s to connect.
        max_retries: extra tries after a connection error, timeout, 408, 429 or 5xx; 0 disables.
        transport: an httpx transport for the pool this client creates (e.g. httpx.MockTransport).
        http_client: an httpx.Client to use instead; the caller keeps ownership and closes it.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.BaseTransport | None = None,
                 http_client: httpx.Client | None = None):
        super().__init__(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                         transport=transport, http_client=http_client, pool_class=httpx.Client)

    def score(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
              config: ScoringConfig | Mapping[str, Any] | None = None,
              returns: ReturnSwitches | Mapping[str, Any] | None = None,
              policy: PolicyRef | Mapping[str, Any] | None = None,
              progress: Progress = False, encoding: Encoding = "auto") -> ScoreResult:
        """Score `groups` at trainer step `step`; `config` overrides only the fields it sets.

        `policy` picks the weights: `{"lora_path": ..., "version": ...}` (a LoRA adapter),
        `{"lora_name": ...}` (one registered at start-up) or `{"version": ...}` (require that
        full-weight version; `PolicyMismatchError` otherwise). `progress=True` shows a progress
        bar per group (tqdm when installed, else lines on stderr); a callable gets
        `(groups_done, groups_total)` instead. Either way the answer streams, so a long batch
        never has to fit one deadline as a whole. `encoding` is the answer's form on the wire:
        "json", "msgpack" (per-token arrays as float32 bytes; `amr_client.binary`) or "auto"
        (msgpack from BINARY_MIN_TOKENS response tokens up); the result is the same either way,
        to float32 precision. Raises `InvalidRequestError` (naming the field) for a bad request
        before sending it.
        """
        body = build_score_body(groups, step=step, config=config, returns=returns, policy=policy)
        if progress:
            return self._score_with_progress(body, progress)
        return self._score_body(body, new_idempotency_key(), encoding)

    def _score_body(self, body: dict[str, Any], idempotency_key: str,
                    encoding: Encoding = "auto") -> ScoreResult:
        """One score request of a built body under `idempotency_key`."""
        headers = build_headers(self.api_key, idempotency_key, accept=answer_type(body, encoding))
        try:
            return parse_score_response(self._send("POST", SCORE_PATH, headers, body))
        except APIStatusError as exc:
            if not retry_as_json(exc, encoding, headers):
                raise
        return parse_score_response(self._send("POST", SCORE_PATH, headers, body))

    def _stream_items(self, body: dict[str, Any], stream: ScoreStream, idempotency_key: str):
        headers = build_headers(self.api_key, idempotency_key, accept=NDJSON)
        assembler = StreamAssembler(len(body["groups"]))

        def attempt():
            with http_errors(), self._http.stream("POST", self._url(SCORE_PATH), headers=headers,
                                                  json=body, timeout=self.timeout) as response:
                if not response.is_success:
                    response.read()
                    raise make_status_error(response)
                for line in response.iter_lines():
                    if (item := assembler.feed(line, response)) is not None:
                        yield item
                stream.result = assembler.result(response.headers.get("x-request-id"),
                                                 response.request)

        return retried_items(attempt, self.max_retries, self._sleep)

    def info(self) -> dict[str, Any]:
        """`GET /v1/info`: model, model_path, policy_version, engine, limits, defaults."""
        return parse_info(self._send("GET", INFO_PATH, build_headers(self.api_key)))

    def set_policy(self, path: str, version: str) -> PolicyStatus:
        """`POST /v1/policy`: load the full weights in `path` (a folder under the service's
        policy root, as the service sees it) as `version`. Safe to retry: the same path and
        version again is a no-op (`changed=False`)."""
        body = build_policy_body(path, version)
        return parse_policy_status(self._send("POST", POLICY_PATH, build_headers(self.api_key), body))

    def get_policy(self) -> PolicyStatus:
        """`GET /v1/policy`: the full-weight version in service and the adapters loaded."""
        return parse_policy_status(self._send("GET", POLICY_PATH, build_headers(self.api_key)))

    def ready(self) -> bool:
        """True when the server is ready to score; False on 503 or when it cannot be reached.

        Not retried: a probe answers about now. Other statuses (401, 404...) raise, since they
        mean a wrong `base_url` or `api_key` rather than a server still warming up.
        """
        try:
            response = self._http.get(self._url(READY_PATH), headers=build_headers(self.api_key),
                                      timeout=self.timeout)
        except httpx.TransportError:
            return False
        return parse_ready(response)

    def _close_connection(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, headers: dict[str, str],
              body: dict[str, Any] | None = None) -> httpx.Response:
        def attempt() -> httpx.Response:
            with http_errors():
                response = self._http.request(method, self._url(path), headers=headers, json=body,
                                              timeout=self.timeout)
            return raise_for_status(response)

        return retried(attempt, self.max_retries, self._sleep)


class AsyncAMRClient(_HttpClient, AsyncBaseClient):
    """Async client of an amr-sd server; the same arguments and methods as `AMRClient`.

    `http_client` must be an httpx.AsyncClient and `transport` an httpx.AsyncBaseTransport.
    """

    def __init__(self, base_url: str = DEFAULT_BASE_URL, *, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.AsyncBaseTransport | None = None,
                 http_client: httpx.AsyncClient | None = None):
        super().__init__(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                         transport=transport, http_client=http_client, pool_class=httpx.AsyncClient)

    async def score(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
                    config: ScoringConfig | Mapping[str, Any] | None = None,
                    returns: ReturnSwitches | Mapping[str, Any] | None = None,
                    policy: PolicyRef | Mapping[str, Any] | None = None,
                    progress: Progress = False, encoding: Encoding = "auto") -> ScoreResult:
        """Score `groups` at trainer step `step`; see `AMRClient.score` (`progress`, `encoding`)."""
        body = build_score_body(groups, step=step, config=config, returns=returns, policy=policy)
        if progress:
            return await self._score_with_progress(body, progress)
        return await self._score_body(body, new_idempotency_key(), encoding)

    async def _score_body(self, body: dict[str, Any], idempotency_key: str,
                          encoding: Encoding = "auto") -> ScoreResult:
        """One score request of a built body under `idempotency_key`."""
        headers = build_headers(self.api_key, idempotency_key, accept=answer_type(body, encoding))
        try:
            return parse_score_response(await self._send("POST", SCORE_PATH, headers, body))
        except APIStatusError as exc:
            if not retry_as_json(exc, encoding, headers):
                raise
        return parse_score_response(await self._send("POST", SCORE_PATH, headers, body))

    def _stream_items(self, body: dict[str, Any], stream: AsyncScoreStream, idempotency_key: str):
        headers = build_headers(self.api_key, idempotency_key, accept=NDJSON)
        assembler = StreamAssembler(len(body["groups"]))

        async def attempt():
            with http_errors():
                async with self._http.stream("POST", self._url(SCORE_PATH), headers=headers,
                                             json=body, timeout=self.timeout) as response:
                    if not response.is_success:
                        await response.aread()
                        raise make_status_error(response)
                    async for line in response.aiter_lines():
                        if (item := assembler.feed(line, response)) is not None:
                            yield item
                    stream.result = assembler.result(response.headers.get("x-request-id"),
                                                     response.request)

        return retried_aitems(attempt, self.max_retries, self._sleep)

    async def info(self) -> dict[str, Any]:
        """`GET /v1/info`: model, model_path, policy_version, engine, limits, defaults."""
        return parse_info(await self._send("GET", INFO_PATH, build_headers(self.api_key)))

    async def set_policy(self, path: str, version: str) -> PolicyStatus:
        """`POST /v1/policy`; see `AMRClient.set_policy`."""
        body = build_policy_body(path, version)
        return parse_policy_status(await self._send("POST", POLICY_PATH, build_headers(self.api_key), body))

    async def get_policy(self) -> PolicyStatus:
        """`GET /v1/policy`; see `AMRClient.get_policy`."""
        return parse_policy_status(await self._send("GET", POLICY_PATH, build_headers(self.api_key)))

    async def ready(self) -> bool:
        """True when the server is ready to score; False on 503 or when it cannot be reached.

        Not retried. Other statuses (401, 404...) raise.
        """
        try:
            response = await self._http.get(self._url(READY_PATH),
                                            headers=build_headers(self.api_key), timeout=self.timeout)
        except httpx.TransportError:
            return False
        return parse_ready(response)

    async def _close_connection(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, headers: dict[str, str],
                    body: dict[str, Any] | None = None) -> httpx.Response:
        async def attempt() -> httpx.Response:
            with http_errors():
                response = await self._http.request(method, self._url(path), headers=headers,
                                                    json=body, timeout=self.timeout)
            return raise_for_status(response)

        return await retried_async(attempt, self.max_retries, self._sleep)
