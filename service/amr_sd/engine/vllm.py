"""The vLLM engine: `AsyncLLM` in the caller's event loop.

Create it under `if __name__ == "__main__"` (or inside a function called from there): vLLM
spawns its engine-core process, which re-imports the main module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import re
import shutil
import uuid
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from amr_sd.engine.base import Adapter, EngineSettings, Generation, GenerationParams
from amr_sd.engine.models import resolve_model
from amr_sd.errors import EngineDead, EngineFailure, InvalidRequest

log = logging.getLogger("amr_sd.engine")

# How long close() lets vLLM's processes exit on their own before it kills them.
SHUTDOWN_TIMEOUT_S = 60.0
DEAD_SHUTDOWN_TIMEOUT_S = 5.0


def has_cxx_compiler() -> bool:
    """What torch's inductor would find: $CXX, else g++ (its default), else c++."""
    return any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "c++") if c)


class VLLMEngine:
    """`base.Engine` on vLLM's `AsyncLLM`; `create()` starts one for a model and its settings."""

    def __init__(self, llm, settings: EngineSettings, *, model_id: str, model_path: str, tokenizer,
                 supports_seed: bool):
        self._llm = llm
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self.settings = settings
        self.model_id = model_id
        self.model_path = model_path
        self.tokenizer = tokenizer
        self.supports_seed = supports_seed
        self.max_lora_rank = settings.max_lora_rank if settings.enable_lora else 0
        self.lora_target_modules = settings.lora_target_modules if settings.enable_lora else ()
        # vLLM keeps loaded adapters in its own LRU (max_cpu_loras) and names them by int id:
        # one id per (label, path). Ids are never reused, so forgetting an old one is safe.
        self._lora_ids: collections.OrderedDict[Adapter, int] = collections.OrderedDict()
        self._next_lora_id = itertools.count(1)
        config = llm.model_config
        self.max_model_len = int(config.max_model_len)
        self.vocab_size = int(config.get_vocab_size())

    @property
    def score_identity(self) -> dict[str, str]:
        return {"engine": type(self).__name__, "dtype": str(self.settings.dtype)}

    @classmethod
    def create(cls, model: str, settings: EngineSettings | None = None) -> "VLLMEngine":
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        from amr_sd.engine.base import detect_device

        device = detect_device()
        settings = settings or EngineSettings.for_device(device)
        path = resolve_model(model)
        if device == "cpu":
            from vllm.utils.cpu_resource_utils import get_allowed_cpu_list

            placed = _auto_bind_per_copy(settings, get_allowed_cpu_list())
            if placed is not settings:
                settings = placed
                log.info("engine cpu_threads_bind=%s: %s", settings.cpu_threads_bind,
                         settings.reasons["cpu_threads_bind"])
        _prepare_environment(settings, device)
        with _threads_bind(settings.cpu_threads_bind):
            llm = AsyncLLM.from_engine_args(_engine_args(path, settings))
        return cls(llm, settings, model_id=model, model_path=path,
                   tokenizer=AutoTokenizer.from_pretrained(path), supports_seed=device != "cpu")

    def _request_id(self) -> str:
        return f"amr-{self._prefix}-{next(self._ids)}"

    def _lora_request(self, adapter: Adapter | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_id(adapter)
        return LoRARequest(f"{adapter.label}#{lora_id}", lora_id, adapter.path)

    def _lora_id(self, adapter: Adapter) -> int:
        if adapter not in self._lora_ids:
            self._lora_ids[adapter] = next(self._next_lora_id)
            if len(self._lora_ids) > _MAX_LORA_IDS:
                self._lora_ids.popitem(last=False)
        self._lora_ids.move_to_end(adapter)
        return self._lora_ids[adapter]

    async def load_adapter(self, adapter: Adapter) -> None:
        # A request naming an adapter vLLM cannot load kills the whole engine core, while
        # add_lora fails cleanly; so every adapter goes through add_lora before any request
        # uses it. Once per request: it also reloads one that vLLM evicted or a weight reload
        # dropped (0.01 s for the embedded model; ~1 ms when already loaded).
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.max_lora_rank == 0:
            raise InvalidRequest("this service was started without LoRA: add --enable-lora")
        try:
            await self._llm.add_lora(self._lora_request(adapter))
        except EngineDeadError as exc:
            raise EngineDead("the vLLM engine process died") from exc
        except Exception as exc:
            self._lora_ids.pop(adapter, None)
            reason = re.search(r"failed with error '(.*)'", str(exc), re.S)
            raise InvalidRequest("vLLM could not load the LoRA adapter: "
                                 + (reason.group(1) if reason else str(exc))) from None

    async def loaded_adapters(self) -> list[str]:
        """Labels of the adapters in vLLM's LRU, least recently used first."""
        loaded = await self._llm.list_loras() if self.max_lora_rank else set()
        return [a.label for a, i in self._lora_ids.items() if i in loaded]

    async def load_weights(self, path: str) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        # vLLM's own loader, in place; it drops every LoRA adapter, so load_adapter re-adds them.
        try:
            await self._llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
            # Cached KV was computed by the old weights; a writer reading it would condition on
            # them. The policy manager reloads only when no request runs, so this succeeds.
            reset = await self._llm.reset_prefix_cache()
        except EngineDeadError as exc:
            raise EngineDead("the vLLM engine process died") from exc
        if not reset:
            raise EngineDead("vLLM did not clear its prefix cache after new weights loaded; "
                             "stopping rather than writing reflections from the old weights' KV")

    async def _final(self, prompt_ids: Sequence[int], params, lora_request=None,
                     abandon_when: Callable[[str], bool] | None = None):
        """The last output of one request; with `abandon_when`, outputs stream (CUMULATIVE) and
        the request is aborted as soon as the predicate holds for its text."""
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        final = None
        # Cancelling this coroutine, or leaving the loop (aclosing closes the generator), makes
        # vLLM abort the request, so no engine work is orphaned.
        try:
            async with contextlib.aclosing(self._llm.generate(
                TokensPrompt(prompt_token_ids=list(prompt_ids)), params, self._request_id(),
                lora_request=lora_request,
            )) as outputs:
                async for out in outputs:
                    final = out
                    if abandon_when is not None and not out.finished and abandon_when(out.outputs[0].text):
                        return out, True
        except EngineDeadError as exc:
            raise EngineDead("the vLLM engine process died") from exc
        except EngineGenerateError as exc:
            raise EngineFailure(f"vLLM failed the request: {exc}") from exc
        if final is None:
            raise EngineFailure("vLLM finished a request without output")
        return final, False

    async def generate(self, prompts, params: GenerationParams,
                       adapter: Adapter | None = None) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=list(params.stop) or None,
            # The caller parses the closing tag, so it must stay in the text.
            include_stop_str_in_output=True,
            seed=params.seed if self.supports_seed else None,
            # FINAL_ONLY: one output per request, no per-token streaming overhead, unless the
            # caller watches the text to abandon it early.
            output_kind=RequestOutputKind.FINAL_ONLY if params.abandon_when is None
            else RequestOutputKind.CUMULATIVE,
        )
        lora = self._lora_request(adapter)
        outs = await asyncio.gather(*(self._final(p, sampling, lora, params.abandon_when)
                                      for p in prompts))
        return [_generation(out.outputs[0], abandoned) for out, abandoned in outs]

    async def score(self, sequences, start_indices, adapter: Adapter | None = None) -> list[np.ndarray]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # Prompt logprobs are raw log-softmax values (temperature does not apply to them);
        # k = 0 returns exactly the actual token's logprob per position.
        params = SamplingParams(
            max_tokens=1,
            temperature=1.0,
            prompt_logprobs=0,
            detokenize=False,
            flat_logprobs=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        lora = self._lora_request(adapter)
        outs = await asyncio.gather(*(self._final(s, params, lora) for s in sequences))
        return [_actual_token_logprobs(o.prompt_logprobs, seq, start)
                for (o, _), seq, start in zip(outs, sequences, start_indices)]

    async def warmup(self) -> None:
        # The first scoring batch on a fresh engine is ~10-20 s slower than later ones; pay that
        # before real work so timings and readiness mean something.
        ids = self.tokenizer.encode("Warm-up: 1 + 1 = 2.", add_special_tokens=False)
        await self.score([ids] * 2, [1, 1])
        await self.generate([ids], GenerationParams(max_tokens=2))

    async def check_health(self) -> None:
        if self._llm is None or self._llm.errored:
            raise EngineDead("the vLLM engine process died")

    def unfinished_requests(self) -> int:
        return 0 if self._llm is None else self._llm.get_num_unfinished_requests()

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            # vLLM's own 5 s bound is shorter than its CPU worker needs to exit (7-8 s seen on a
            # 2-core EPYC); a forced kill then leaks the worker's semaphores, and Python's
            # resource tracker reports them on stderr after the program's last line.
            # A dead engine has nothing left to finish: vLLM's own short bound then.
            llm.shutdown(timeout=DEAD_SHUTDOWN_TIMEOUT_S if llm.errored else SHUTDOWN_TIMEOUT_S)
            # AsyncLLM.__del__ calls shutdown() again at interpreter exit, when vLLM's module
            # globals are already gone (a TypeError on stderr); once is enough.
            llm.shutdown = lambda timeout=None: None


_MAX_LORA_IDS = 10_000


def _auto_bind_per_copy(settings: EngineSettings, cpus) -> EngineSettings:
    """`auto` binding for several model processes, on a CPU with fewer NUMA nodes than them.

    vLLM's `auto` gives model process k the CPUs of the k-th NUMA node it may use; with one node
    every engine copy got the same cores (2 copies on a 2-core VM: both on core 0, core 1
    reserved). There, one CPU per physical core (as `auto` picks on x86), split between the
    processes. `cpus`: vLLM's LogicalCPUInfo list (id, physical_core, numa_node).
    """
    processes = settings.model_processes
    nodes = {cpu.numa_node for cpu in cpus}
    if settings.cpu_threads_bind != "auto" or settings.data_parallel_size == 1 \
            or len(nodes) >= processes:
        return settings
    first_of_core: dict[tuple[int, int], int] = {}
    for cpu in sorted(cpus, key=lambda c: c.id):
        first_of_core.setdefault((cpu.numa_node, cpu.physical_core), cpu.id)
    ids = sorted(first_of_core.values())
    if len(ids) < processes:  # fewer cores than processes: SMT siblings too, rather than fail
        ids = sorted(cpu.id for cpu in cpus)
    from amr_sd.engine.machine import cpu_list

    why = (f"vLLM's automatic binding puts every engine copy on the same cores when there are "
           f"fewer NUMA nodes ({len(nodes)}) than model processes ({processes}): one CPU per "
           "physical core instead")
    return replace(settings, cpu_threads_bind=cpu_list(tuple(ids)),
                   reasons={**settings.reasons, "cpu_threads_bind": why}).split_cpu_threads()


@contextlib.contextmanager
def _threads_bind(bind: str | None):
    """VLLM_CPU_OMP_THREADS_BIND = `bind` while vLLM starts its engine processes (they inherit
    it), then as it was: left set, a later engine in this process (a test session's) would take
    this one's binding for the user's own, as `machine.cpu_defaults` honours a set variable."""
    if bind is None:
        yield
        return
    before = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = before


def _prepare_environment(settings: EngineSettings, device: str) -> None:
    """What vLLM reads from the environment rather than its arguments and may read later; its
    engine-core process inherits it."""
    if device == "cpu" and settings.enforce_eager and not has_cxx_compiler():
        # Even in eager mode vLLM torch.compiles two small sampler helpers (logprob ranks,
        # top-k/top-p); on the CPU inductor needs a C++ compiler, and a slim image has none:
        # the engine died at its first step. Without one they run eagerly instead.
        log.info("no C++ compiler on PATH: torch.compile off for vLLM's sampler helpers")
        os.environ["TORCHDYNAMO_DISABLE"] = "1"  # spawned engine processes
        import torch._dynamo

        torch._dynamo.config.disable = True  # forked ones, and this process


def _engine_args(path: str, settings: EngineSettings):
    from vllm import AsyncEngineArgs

    kv_bytes = None if settings.kv_cache_gib is None else int(settings.kv_cache_gib * 2**30)
    return AsyncEngineArgs(
        model=path,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,  # None lets vLLM take the model's own
        gpu_memory_utilization=settings.gpu_memory_utilization,
        kv_cache_memory_bytes=kv_bytes,
        enforce_eager=settings.enforce_eager,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_num_seqs=settings.max_num_seqs,
        enable_prefix_caching=settings.prefix_caching,
        tensor_parallel_size=settings.tensor_parallel_size,
        # N > 1: AsyncLLM starts N engine cores and a coordinator, and sends each request to the
        # least loaded one; adapter loads, weight reloads and cache resets reach every core.
        data_parallel_size=settings.data_parallel_size,
        disable_log_stats=True,
        **_lora_args(settings),
        **settings.extra,
    )


def _lora_args(settings: EngineSettings) -> dict:
    if not settings.enable_lora:
        return {}
    return {"enable_lora": True, "max_lora_rank": settings.max_lora_rank,
            "max_loras": settings.max_loras, "max_cpu_loras": settings.max_cpu_loras,
            "lora_target_modules": list(settings.lora_target_modules)}


def _generation(out, abandoned: bool) -> Generation:
    """A `Generation` from vLLM's completion output; `abandoned`: the caller's verdict ended it."""
    reason = "abandoned" if abandoned else "stop" if out.finish_reason == "stop" else "length"
    return Generation(text=out.text, token_ids=tuple(out.token_ids), finish_reason=reason)


def _actual_token_logprobs(flat, seq: Sequence[int], start: int) -> np.ndarray:
    """The logprob of each actual token of `seq[start:]` from vLLM's flat prompt logprobs.

    A row that holds another token than the one asked for means the engine scored something
    else than the response (a re-tokenised or truncated prompt): fail, never return it.
    """
    if start < 1:
        raise ValueError("start index must be >= 1: position 0 has no logprob")
    if len(flat) != len(seq):
        raise EngineFailure(f"vLLM returned {len(flat)} prompt logprob rows for {len(seq)} tokens")
    values = np.empty(len(seq) - start, dtype=np.float64)
    for k, pos in enumerate(range(start, len(seq))):
        i, end = flat.start_indices[pos], flat.end_indices[pos]
        got = flat.token_ids[i] if end > i else None
        if got != seq[pos]:
            raise EngineFailure(f"vLLM scored token {got} at position {pos}, expected {seq[pos]}")
        values[k] = flat.logprobs[i]
    return values
