"""The policy in service: which weights score a request, and swapping them without a mix.

Full weights: one version at a time. A reload closes a gate: new requests wait at it (up to
`wait_s`, then 503 + Retry-After), the reload waits until the requests already past it have
finished, vLLM loads the new weights in place, and the gate opens. So every request is scored
entirely under one version, and the version it reports is the one that scored it.

LoRA adapters ride on top of the full weights, per request: checked here, then loaded into the
engine (vLLM keeps them in its own LRU) before the request's first engine call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from amr_client.schemas import PolicyRef, PolicyStatus, PolicyUpdate
from amr_sd.checkpoint import TensorIndex, check_adapter, check_checkpoint, read_index, resolve_under
from amr_sd.engine.base import Adapter, Policy, WeightsEngine
from amr_sd.errors import (DeadlineExceeded, EngineDead, InvalidRequest, PolicyMismatch,
                           PolicyReloading)

log = logging.getLogger("amr_sd.policy")

_MAX_CHECKED_ADAPTERS = 1024


class PolicyManager:
    def __init__(self, engine: WeightsEngine, *, root: str | None, version: str = "base",
                 lora_modules: dict[str, str] | None = None, wait_s: float = 30.0):
        self.engine = engine
        self.root = root
        self.wait_s = wait_s
        self.path = engine.model_path
        self._version = version
        # A label names one set of weights for the life of the process: the reflection cache is
        # keyed by it, so reusing a label for other weights would replay stale reflections.
        self._labels = {version: self.path}
        self._modules = {name: Adapter(name, path) for name, path in (lora_modules or {}).items()}
        self._checked: dict[Adapter, None] = {}  # adapters already checked, oldest first
        self._served_index: TensorIndex | None = None
        self._open = asyncio.Event()  # cleared while a reload owns the gate
        self._open.set()
        self._idle = asyncio.Event()  # set when no request is being scored
        self._idle.set()
        self._active = 0

    @property
    def version(self) -> str:
        return self._version

    @property
    def reloading(self) -> bool:
        """A reload owns the gate: it waits for requests in flight, or is loading."""
        return not self._open.is_set()

    def check_modules(self) -> None:
        """Check the adapters registered at start-up (`--lora-modules`); raise on a bad one."""
        for name, adapter in self._modules.items():
            check_adapter(adapter.path, self.engine.max_lora_rank, self.engine.lora_target_modules,
                          self._served(), f"lora_modules.{name}")

    # ------------------------------------------------------------------ per request

    def adapter_for(self, ref: PolicyRef | None) -> Adapter | None:
        if ref is None:
            return None
        if ref.lora_name is not None:
            adapter = self._modules.get(ref.lora_name)
            if adapter is None:
                known = ", ".join(sorted(self._modules)) or "none"
                raise InvalidRequest(f"no adapter is registered as {ref.lora_name!r} (registered: "
                                     f"{known})", field="policy.lora_name")
            return adapter
        if ref.lora_path is None:
            return None
        if not self.engine.max_lora_rank:
            raise InvalidRequest("this service serves no LoRA adapters: start it with "
                                 "--enable-lora (and --engine vllm)", field="policy.lora_path")
        folder = resolve_under(self.root, ref.lora_path, "policy.lora_path")
        adapter = Adapter(ref.version, folder)
        if adapter not in self._checked:
            check_adapter(folder, self.engine.max_lora_rank, self.engine.lora_target_modules,
                          self._served(), "policy.lora_path")
            self._checked[adapter] = None
            if len(self._checked) > _MAX_CHECKED_ADAPTERS:
                del self._checked[next(iter(self._checked))]
        return adapter

    @asynccontextmanager
    async def serving(self, ref: PolicyRef | None):
        """Hold the policy steady for one request: no reload starts until the block ends."""
        adapter = self.adapter_for(ref)
        if not self._open.is_set():
            deadline = asyncio.get_running_loop().time() + self.wait_s
            try:
                async with asyncio.timeout_at(deadline):
                    while not self._open.is_set():  # a second reload may close it again
                        await self._open.wait()
            except TimeoutError:
                raise PolicyReloading(f"new weights are still loading after {self.wait_s:g} s; "
                                      "retry") from None
        # No await from the check above to here: a reload cannot slip in between.
        if ref is not None and adapter is None and ref.version is not None \
                and ref.version != self.version:
            raise PolicyMismatch(f"the service holds policy version {self.version!r}; the "
                                 f"request requires {ref.version!r}", field="policy.version")
        self._active += 1
        self._idle.clear()
        try:
            if adapter is not None:
                try:
                    await self.engine.load_adapter(adapter)
                except InvalidRequest as exc:
                    exc.field = "policy.lora_name" if ref.lora_name else "policy.lora_path"
                    raise
            yield Policy(self.version, adapter)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    # ------------------------------------------------------------------ full-weight reload

    async def reload(self, update: PolicyUpdate, timeout_s: float) -> tuple[PolicyStatus, str]:
        """Load `update` into the engine; returns the new status and the outcome (metrics)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        folder = resolve_under(self.root, update.path, "path")
        await asyncio.to_thread(self._check_checkpoint, folder)
        try:
            async with asyncio.timeout_at(start + timeout_s):
                while not self._open.is_set():  # another reload owns the gate
                    await self._open.wait()
                previous = self.version
                if (update.version, folder) == (previous, self.path):
                    return await self.status(previous_version=previous, changed=False,
                                             reload_s=0.0, wait_s=loop.time() - start), "unchanged"
                known = self._labels.get(update.version)
                if known is not None and known != folder:
                    raise InvalidRequest(f"version {update.version!r} already named the weights in "
                                         f"{known}; give new weights a new label", field="version")
                self._open.clear()
                try:
                    await self._idle.wait()
                except BaseException:  # the deadline, or the caller left: nothing changed
                    self._open.set()
                    raise
        except TimeoutError:
            raise DeadlineExceeded(f"requests in flight did not finish within {timeout_s:g} s; "
                                   "the weights were not changed") from None
        waited = loop.time() - start
        # From here the swap runs to its end even if the caller goes away: the gate must not
        # open on half-loaded weights.
        reload_s = await asyncio.shield(asyncio.ensure_future(self._swap(folder, update.version)))
        log.info("policy %s -> %s from %s in %.2f s (waited %.2f s)", previous, update.version,
                 folder, reload_s, waited)
        return await self.status(previous_version=previous, changed=True, reload_s=reload_s,
                                 wait_s=waited), "loaded"

    def _served(self) -> TensorIndex:
        """The tensors of the checkpoint the engine started on: what every folder must match."""
        if self._served_index is None:
            self._served_index = read_index(self.engine.model_path, "path")
        return self._served_index

    def _check_checkpoint(self, folder: str) -> None:
        check_checkpoint(folder, self.engine.model_path, self._served())

    async def _swap(self, folder: str, version: str) -> float:
        start = time.perf_counter()
        try:
            try:
                await self.engine.load_weights(folder)
            except EngineDead:
                raise
            except Exception as exc:
                log.exception("loading %s failed; restoring %s", folder, self.path)
                try:
                    await self.engine.load_weights(self.path)
                except Exception as restore:
                    raise EngineDead("a failed reload left the weights in an unknown state and "
                                     "restoring the previous ones failed too") from restore
                raise InvalidRequest(f"the engine could not load the checkpoint ({exc}); version "
                                     f"{self.version!r} is still in service", field="path") from exc
            self._version, self.path = version, folder
            self._labels[version] = folder
            return time.perf_counter() - start
        finally:
            self._open.set()

    async def status(self, **post_fields) -> PolicyStatus:
        return PolicyStatus(version=self.version, path=self.path,
                            lora_enabled=bool(self.engine.max_lora_rank),
                            lora_modules=sorted(self._modules),
                            adapters_loaded=await self.engine.loaded_adapters(), **post_fields)
