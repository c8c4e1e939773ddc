"""`ReplicaClient` / `AsyncReplicaClient`: one `score()` spread over many amr-sd replicas.

    from amr_client import ReplicaClient

    scorer = ReplicaClient(["http://scorer-0:8000", "http://scorer-1:8000"])     # a list
    scorer = ReplicaClient(dns="amr-sd-headless.team.svc.cluster.local:8000")    # every pod DNS names
    scorer = ReplicaClient(["scorer-0:50051", "scorer-1:50051"], transport="grpc")
    scorer = ReplicaClient(dns="amr-sd-headless.team.svc.cluster.local:50051", transport="grpc")
    result = scorer.score(groups, step=step)    # the ScoreResult one server would give

A batch is split into shards of whole groups balanced by response tokens (`shards.split`), one
per replica; the shards go out side by side and the answers come back in request order
(`shards.merge`), stats summed. Over HTTP each replica has its own connection pool; with `dns=`
the name is resolved to every address it has (a headless Service: every ready pod) and again
every `dns_refresh_s` and after a connection failure. Over gRPC with `dns=` the shards share one
channel to `dns:///host:port` with gRPC's own `round_robin` policy, which spreads the calls over
every address and skips the ones that fail; the SDK resolves the name itself only to count the
shards and to reach each replica for `set_policy`.

A shard whose replica fails (cannot be reached, dies mid-answer, 429, 5xx, or holds another
policy version) is sent again to another replica, under that replica's own idempotency key, so
each group is answered exactly once or the call raises; a failed replica is tried last for
`DOWN_FOR_S`. Every shard names the full-weight policy version it expects (`policy_version`:
the one `set_policy` last set, else the one every replica reported at first use), so a replica
on other weights answers 409 `policy_mismatch` and the shard goes elsewhere, rather than being
scored with the wrong weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from amr_client._base import (
    DEFAULT_MAX_RETRIES,
    NOT_GIVEN,
    AsyncBaseClient,
    Encoding,
    NotGiven,
    SyncBaseClient,
    build_score_body,
    check_max_retries,
    new_idempotency_key,
)
from amr_client._client import AsyncAMRClient
from amr_client._exceptions import AMRError, APIConnectionError, APIStatusError, PolicyMismatchError
from amr_client._retries import retry_delay, should_retry
from amr_client.results import ScoreResult
from amr_client.schemas import Group, PolicyRef, PolicyStatus, ReturnSwitches, ScoringConfig
from amr_client.shards import ReplicaMismatchError, group_tokens, merge, must_stay_whole, split
from amr_client.streams import AsyncScoreStream, Progress

__all__ = ["AsyncReplicaClient", "FanOutError", "ReplicaClient"]

log = logging.getLogger("amr_client.replicas")

Transport = Literal["http", "grpc"]
DEFAULT_PORTS = {"http": 8000, "grpc": 50051}
DEFAULT_DNS_REFRESH_S = 30.0
# A replica that failed is tried last for this long: long enough to skip a dead pod for the rest
# of a step, short enough to use a restarted one in the next.
DOWN_FOR_S = 10.0
ROUND_ROBIN = (("grpc.lb_policy_name", "round_robin"),)


class FanOutError(AMRError):
    """A call meant for every replica (`set_policy`, `get_policy`) failed on some of them.

    `results` maps each replica that answered to its answer, `errors` each one that did not to
    its exception; the message names the failed ones.
    """

    def __init__(self, action: str, results: Mapping[str, Any], errors: Mapping[str, BaseException]):
        self.results = dict(results)
        self.errors = dict(errors)
        failed = "; ".join(f"{name}: {error}" for name, error in self.errors.items())
        super().__init__(f"{action} failed on {len(self.errors)} of {len(self.results) + len(self.errors)} "
                         f"replicas ({failed})")


@dataclass
class Replica:
    """One server: its name (URL or gRPC target), its client, and when it may be tried first
    again after a failure."""

    name: str
    client: Any  # AsyncAMRClient | AsyncAMRGrpcClient
    down_until: float = 0.0

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until


def parse_dns(dns: str, transport: Transport) -> tuple[str, int]:
    """`host[:port]` of the `dns=` argument; the port defaults to the transport's."""
    if not isinstance(dns, str) or not dns.strip() or "/" in dns:
        raise ValueError(f"dns must be a name and port such as 'amr-sd-headless.ns.svc:"
                         f"{DEFAULT_PORTS[transport]}', got {dns!r}")
    host, _, port = dns.strip().rpartition(":") if ":" in dns else (dns.strip(), "", "")
    if not port:
        return dns.strip(), DEFAULT_PORTS[transport]
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"dns must be a name and port such as 'amr-sd-headless.ns.svc:"
                         f"{DEFAULT_PORTS[transport]}', got {dns!r}")
    return host, int(port)


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` has (a headless Service's: one per ready pod), sorted, deduplicated."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def _host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ipaddress.ip_address(address).version == 6 else f"{address}:{port}"


class AsyncReplicaClient(AsyncBaseClient):
    """Async client of several amr-sd replicas; the methods of `AsyncAMRClient`, over all of them.

    Args:
        replicas: the servers: HTTP base URLs ("http://scorer-0:8000"), or gRPC targets
            ("scorer-0:50051") with `transport="grpc"`.
        dns: instead of `replicas`, a name and port whose every address is a replica (a
            Kubernetes headless Service), e.g. "amr-sd-headless.team.svc.cluster.local:8000".
        transport: "http" (default) or "grpc" (needs `pip install "amr-sd[grpc]"`).
        api_key, timeout: as `AsyncAMRClient` takes them, for each replica.
        max_retries: extra tries of a shard beyond one per replica (connection errors, 429, 5xx).
        dns_refresh_s: how long a DNS answer is used before the name is resolved again.
    """

    _ADDRESS = "replicas"

    def __init__(self, replicas: Sequence[str] | None = None, *, dns: str | None = None,
                 transport: Transport = "http", api_key: str | None = None,
                 timeout: float | httpx.Timeout | None | NotGiven = NOT_GIVEN,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 dns_refresh_s: float = DEFAULT_DNS_REFRESH_S):
        if transport not in DEFAULT_PORTS:
            raise ValueError(f"transport must be 'http' or 'grpc', got {transport!r}")
        if (replicas is None) == (dns is None):
            raise ValueError("give replicas=[...] (URLs or gRPC targets) or dns='name:port', one of them")
        self.transport = transport
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = check_max_retries(max_retries)
        self.dns_refresh_s = float(dns_refresh_s)
        self._known: dict[str, Replica] = {}  # every replica made so far, by name
        self._dns = parse_dns(dns, transport) if dns is not None else None
        self._addresses: list[str] = []
        self._resolved_at = -float("inf")
        self._balanced: Replica | None = None  # gRPC with dns=: one round_robin channel
        self.policy_version: str | None = None
        if replicas is not None:
            if isinstance(replicas, str):
                raise ValueError("replicas must be a list of URLs or targets; got one string: "
                                 "pass [replica], or dns='name:port' for every address of a name")
            names = list(replicas)
            if not names:
                raise ValueError("replicas must name at least one server")
            if len(set(names)) != len(names):
                raise ValueError(f"replicas lists a server twice: {names}")
            self._static = [self._replica(name) for name in names]
        else:
            self._static = None
            if transport == "grpc":
                host, port = self._dns
                self._balanced = Replica(f"dns:///{host}:{port}", self._make_client(
                    f"dns:///{host}:{port}", ROUND_ROBIN))

    # ------------------------------------------------------------------ replicas

    def _make_client(self, name: str, channel_options: Sequence[tuple[str, Any]] = ()):
        timeout = {} if isinstance(self.timeout, NotGiven) else {"timeout": self.timeout}
        # The shard's own loop retries, on another replica; a replica's client tries once.
        if self.transport == "grpc":
            from amr_client.grpc_client import AsyncAMRGrpcClient

            return AsyncAMRGrpcClient(name, api_key=self.api_key, max_retries=0,
                                      channel_options=channel_options, **timeout)
        return AsyncAMRClient(name, api_key=self.api_key, max_retries=0, **timeout)

    def _replica(self, name: str) -> Replica:
        if name not in self._known:
            self._known[name] = Replica(name, self._make_client(name))
        return self._known[name]

    async def replicas(self) -> list[Replica]:
        """The replicas now: the list given, or one per address the DNS name has."""
        if self._static is not None:
            return self._static
        host, port = self._dns
        if time.monotonic() - self._resolved_at > self.dns_refresh_s or not self._addresses:
            try:
                addresses = await resolve(host, port)
            except OSError as exc:
                if not self._addresses:
                    raise APIConnectionError(f"Connection error: cannot resolve {host!r}: {exc}") from exc
                addresses = self._addresses  # keep the last answer through a DNS hiccup
            self._addresses, self._resolved_at = addresses, time.monotonic()
        scheme = "http://" if self.transport == "http" else ""
        return [self._replica(scheme + _host_port(a, port)) for a in self._addresses]

    async def _routes(self) -> tuple[list[Replica], int]:
        """Where shards go, and how many shards to make: a replica each, or over gRPC with dns=
        the one round_robin channel, as many shards as the name has addresses."""
        replicas = await self.replicas()
        if self._balanced is not None:
            return [self._balanced], len(replicas)
        return replicas, len(replicas)

    def _failed(self, replica: Replica) -> None:
        replica.down_until = time.monotonic() + DOWN_FOR_S
        self._resolved_at = -float("inf")  # a pod gone from the Service: ask DNS again

    # ------------------------------------------------------------------ policy

    async def _each(self, action: str, call: Callable[[Any], Awaitable[Any]]) -> dict[str, Any]:
        replicas = await self.replicas()
        answers = await asyncio.gather(*(call(r.client) for r in replicas), return_exceptions=True)
        results = {r.name: a for r, a in zip(replicas, answers) if not isinstance(a, BaseException)}
        errors = {r.name: a for r, a in zip(replicas, answers) if isinstance(a, BaseException)}
        for error in errors.values():
            if not isinstance(error, Exception):
                raise error  # cancellation, KeyboardInterrupt
        if errors:
            raise FanOutError(action, results, errors)
        return results

    async def set_policy(self, path: str, version: str) -> dict[str, PolicyStatus]:
        """`set_policy` on every replica at once; each replica's `PolicyStatus` by name.

        From then on every shard requires `version`. Raises `FanOutError` naming the replicas it
        did not reach (`.results` holds the ones it did): a replica left on the old weights
        answers `policy_mismatch` to each shard, which goes to another replica instead.
        """
        self.policy_version = version
        return await self._each(f"set_policy {version!r}", lambda c: c.set_policy(path, version))

    async def get_policy(self) -> dict[str, PolicyStatus]:
        """Every replica's `PolicyStatus`, by name (`FanOutError` if some cannot answer)."""
        return await self._each("get_policy", lambda c: c.get_policy())

    async def info(self) -> dict[str, dict[str, Any]]:
        """Every replica's `info()`, by name (`FanOutError` if some cannot answer)."""
        return await self._each("info", lambda c: c.info())

    async def ready(self) -> bool:
        """True when at least one replica is ready to score."""
        replicas = await self.replicas()
        return any(await asyncio.gather(*(r.client.ready() for r in replicas)))

    async def _expected_version(self) -> str:
        """The full-weight version shards require: the one set, else the replicas' own, once
        they agree on it."""
        if self.policy_version is None:
            try:
                statuses = await self.get_policy()
            except FanOutError as exc:
                if not exc.results:
                    raise next(iter(exc.errors.values())) from exc
                statuses = exc.results  # the replicas that are down are not asked to score
            versions = {status.version for status in statuses.values()}
            if len(versions) > 1:
                raise ReplicaMismatchError(
                    "replicas hold different policy versions: "
                    + ", ".join(f"{name}: {s.version!r}" for name, s in statuses.items())
                    + "; call set_policy on this client to put them all on one",
                    field="policy_version", values={n: s.version for n, s in statuses.items()})
            self.policy_version = versions.pop()
        return self.policy_version

    async def _pinned(self, body: dict[str, Any]) -> dict[str, Any]:
        if "policy" in body:
            return body  # the caller's own choice (an adapter, or a version)
        return {**body, "policy": {"version": await self._expected_version()}}

    # ------------------------------------------------------------------ scoring

    async def score(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
                    config: ScoringConfig | Mapping[str, Any] | None = None,
                    returns: ReturnSwitches | Mapping[str, Any] | None = None,
                    policy: PolicyRef | Mapping[str, Any] | None = None,
                    progress: Progress = False, encoding: Encoding = "auto") -> ScoreResult:
        """Score `groups` over every replica; see `AMRClient.score`. The answer is the one a
        single server gives, groups in request order (`shards` on the merged stats)."""
        body = build_score_body(groups, step=step, config=config, returns=returns, policy=policy)
        if progress:
            return await self._score_with_progress(body, progress)
        body = await self._pinned(body)
        shards = await self._shards(body)
        options = {} if self.transport == "grpc" else {"encoding": encoding}

        async def send(replica: Replica, sub: dict[str, Any], key: str) -> ScoreResult:
            return await replica.client._score_body(sub, key, **options)

        results = await _all([self._shard(n, sub, send) for n, (_, sub) in enumerate(shards)])
        return self._merged(shards, results, len(body["groups"]))

    def _stream_items(self, body: dict[str, Any], stream: AsyncScoreStream, idempotency_key: str):
        return self._merged_stream(body, stream)

    async def _merged_stream(self, body: dict[str, Any], stream: AsyncScoreStream) -> AsyncIterator:
        body = await self._pinned(body)
        shards = await self._shards(body)
        queue: asyncio.Queue = asyncio.Queue()

        def sender(indices: list[int]):
            async def send(replica: Replica, sub: dict[str, Any], key: str) -> ScoreResult:
                part = replica.client._stream(sub, key)
                async for local, group in part:
                    queue.put_nowait((indices[local], group))
                return part.result
            return send

        async def run(n: int, indices: list[int], sub: dict[str, Any]):
            return await self._shard(n, sub, sender(indices))

        tasks = [asyncio.ensure_future(run(n, indices, sub)) for n, (indices, sub) in enumerate(shards)]
        gathered = asyncio.ensure_future(_all(tasks))
        passed_on: set[int] = set()
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, gathered}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                index, group = getter.result()
                if index not in passed_on:  # a shard retried elsewhere resends what it had sent
                    passed_on.add(index)
                    yield index, group
            results = gathered.result()
            while not queue.empty():
                index, group = queue.get_nowait()
                if index not in passed_on:
                    passed_on.add(index)
                    yield index, group
        finally:
            for task in tasks:
                task.cancel()
            gathered.cancel()
            await asyncio.gather(gathered, return_exceptions=True)
        stream.result = self._merged(shards, results, len(body["groups"]))

    async def _shards(self, body: dict[str, Any]) -> list[tuple[list[int], dict[str, Any]]]:
        routes, n_shards = await self._routes()
        groups = body["groups"]
        if must_stay_whole(body):
            n_shards = 1
        parts = split([group_tokens(g) for g in groups], n_shards)
        return [(indices, {**body, "groups": [groups[i] for i in indices]}) for indices in parts]

    async def _shard(self, n: int, sub: dict[str, Any],
                     send: Callable[[Replica, dict[str, Any], str], Awaitable[ScoreResult]]) -> tuple[Replica, ScoreResult]:
        """Shard `n`'s answer and the replica that gave it: tried on replica n first, then on the
        others, each under its own idempotency key (a retry on the same replica reuses its key)."""
        keys: dict[str, str] = {}
        waits = 0
        tries = 0
        while True:
            routes, n_replicas = await self._routes()
            replica = _pick(routes, n, keys)
            key = keys.setdefault(replica.name, new_idempotency_key())
            try:
                return replica, await send(replica, sub, key)
            except (APIConnectionError, APIStatusError) as error:
                tries += 1
                elsewhere = isinstance(error, PolicyMismatchError) or should_retry(error)
                if not elsewhere or tries > self.max_retries + n_replicas - 1:
                    raise
                self._failed(replica)
                log.warning("shard %d failed on %s (%s); trying another replica", n, replica.name, error)
                if isinstance(error, PolicyMismatchError) and all(r.name in keys for r in routes):
                    raise  # no replica holds the version the shard requires
                if all(r.name in keys and r.is_down() for r in routes):
                    header = error.headers.get("retry-after") if isinstance(error, APIStatusError) else None
                    await asyncio.sleep(retry_delay(waits, header))
                    waits += 1

    def _merged(self, shards, results, n_groups: int) -> ScoreResult:
        response = merge([(indices, result.response) for (indices, _), (_, result) in zip(shards, results)],
                         n_groups, names=[replica.name for replica, _ in results])
        ids = [result.request_id for _, result in results if result.request_id]
        return ScoreResult(response, request_id=",".join(ids) or None)

    # ------------------------------------------------------------------ settings and closing

    def with_options(self, *, timeout: float | httpx.Timeout | None | NotGiven = NOT_GIVEN,
                     max_retries: int | NotGiven = NOT_GIVEN):
        """A copy with another per-replica timeout or retry budget, on the same connections."""
        clone = copy.copy(self)
        if not isinstance(max_retries, NotGiven):
            clone.max_retries = check_max_retries(max_retries)
        if not isinstance(timeout, NotGiven):
            clone.timeout = timeout
            clone._known = {name: copy.copy(r) for name, r in self._known.items()}
            for replica in clone._known.values():
                replica.client = replica.client.with_options(timeout=timeout)
            if clone._static is not None:
                clone._static = [clone._known[r.name] for r in self._static]
            if self._balanced is not None:
                clone._balanced = Replica(self._balanced.name, self._balanced.client.with_options(timeout=timeout))
        clone._owns_connection = False
        return clone

    def __repr__(self) -> str:
        where = f"replicas={[r.name for r in self._static]!r}" if self._static is not None else \
            f"dns={':'.join(map(str, self._dns))!r}"
        return f"{type(self).__name__}({where}, transport={self.transport!r}, max_retries={self.max_retries})"

    async def _close_connection(self) -> None:
        clients = [r.client for r in self._known.values()]
        if self._balanced is not None:
            clients.append(self._balanced.client)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def _pick(routes: Sequence[Replica], n: int, tried: Mapping[str, str]) -> Replica:
    """Shard n's next replica: from replica n round the ring, the first one not tried by this
    shard and not down, else the first not down, else the first."""
    ring = [routes[(n + i) % len(routes)] for i in range(len(routes))]
    for choose in (lambda r: r.name not in tried and not r.is_down(),
                   lambda r: r.name not in tried,
                   lambda r: not r.is_down()):
        found = next((r for r in ring if choose(r)), None)
        if found is not None:
            return found
    return ring[0]


async def _all(aws) -> list:
    """Every awaitable's result; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


# --------------------------------------------------------------------------------------------
# The blocking client: the async one on an event loop of its own
# --------------------------------------------------------------------------------------------


class _Loop:
    """An event loop in a daemon thread; `run` waits for a coroutine on it, `iterate` walks an
    async iterator from blocking code."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="amr-replicas", daemon=True)
        self.thread.start()

    def run(self, coro):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt in the caller: stop the work on the loop too
            raise

    def iterate(self, items: AsyncIterator) -> Iterator:
        try:
            while True:
                try:
                    yield self.run(anext(items))
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(RuntimeError):
                self.run(items.aclose())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class ReplicaClient(SyncBaseClient):
    """Blocking client of several amr-sd replicas: `AsyncReplicaClient`'s arguments, and the
    methods of `AMRClient` over all of them (`score`, `score_stream`, `set_policy`, ...)."""

    _ADDRESS = "replicas"

    def __init__(self, replicas: Sequence[str] | None = None, *, dns: str | None = None,
                 transport: Transport = "http", api_key: str | None = None,
                 timeout: float | httpx.Timeout | None | NotGiven = NOT_GIVEN,
                 max_retries: int = DEFAULT_MAX_RETRIES,
                 dns_refresh_s: float = DEFAULT_DNS_REFRESH_S):
        self._pool = AsyncReplicaClient(replicas, dns=dns, transport=transport, api_key=api_key,
                                        timeout=timeout, max_retries=max_retries,
                                        dns_refresh_s=dns_refresh_s)
        self._loop = _Loop()

    @property
    def policy_version(self) -> str | None:
        """The full-weight version every shard requires (None until first use or set_policy)."""
        return self._pool.policy_version

    @policy_version.setter
    def policy_version(self, version: str | None) -> None:
        self._pool.policy_version = version

    @property
    def max_retries(self) -> int:
        return self._pool.max_retries

    def score(self, groups: Iterable[Group | Mapping[str, Any]], *, step: int,
              config: ScoringConfig | Mapping[str, Any] | None = None,
              returns: ReturnSwitches | Mapping[str, Any] | None = None,
              policy: PolicyRef | Mapping[str, Any] | None = None,
              progress: Progress = False, encoding: Encoding = "auto") -> ScoreResult:
        """See `AsyncReplicaClient.score`."""
        if progress:
            body = build_score_body(groups, step=step, config=config, returns=returns, policy=policy)
            return self._score_with_progress(body, progress)
        return self._loop.run(self._pool.score(groups, step=step, config=config, returns=returns,
                                               policy=policy, encoding=encoding))

    def _stream_items(self, body: dict[str, Any], stream, idempotency_key: str):
        part = self._pool._stream(body)
        yield from self._loop.iterate(part.__aiter__())
        stream.result = part.result

    def set_policy(self, path: str, version: str) -> dict[str, PolicyStatus]:
        """See `AsyncReplicaClient.set_policy`."""
        return self._loop.run(self._pool.set_policy(path, version))

    def get_policy(self) -> dict[str, PolicyStatus]:
        return self._loop.run(self._pool.get_policy())

    def info(self) -> dict[str, dict[str, Any]]:
        return self._loop.run(self._pool.info())

    def ready(self) -> bool:
        return self._loop.run(self._pool.ready())

    def replicas(self) -> list[str]:
        """The replicas' names now (the list given, or the DNS name's addresses)."""
        return [r.name for r in self._loop.run(self._pool.replicas())]

    def with_options(self, *, timeout: float | httpx.Timeout | None | NotGiven = NOT_GIVEN,
                     max_retries: int | NotGiven = NOT_GIVEN):
        clone = copy.copy(self)
        clone._pool = self._pool.with_options(timeout=timeout, max_retries=max_retries)
        clone._owns_connection = False
        return clone

    def __repr__(self) -> str:
        return repr(self._pool).replace("AsyncReplicaClient", type(self).__name__, 1)

    def _close_connection(self) -> None:
        self._loop.run(self._pool.close())
        self._loop.stop()
