"""The transformers reference engine: the same protocol on a plain forward pass.

It is slow and sequential by design; it exists to cross-check vLLM's numbers and to run where
vLLM is not installed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from amr_sd.engine.base import Adapter, EngineSettings, Generation, GenerationParams
from amr_sd.engine.models import resolve_model
from amr_sd.errors import InvalidRequest


class HFEngine:
    supports_seed = True
    max_lora_rank = 0
    lora_target_modules: tuple[str, ...] = ()

    def __init__(self, model: str, settings: EngineSettings | None = None, *,
                 dtype: str | None = None):
        """Of `settings` (default `EngineSettings()`: bfloat16, 4096 tokens) it reads the dtype
        ("auto" is bfloat16) and max_model_len; `dtype` replaces the settings' own."""
        settings = settings or EngineSettings()
        if settings.data_parallel_size != 1:
            # Refused, not ignored: a server asked for N copies would silently serve one.
            raise ValueError(f"the transformers engine runs one model copy: --data-parallel-size "
                             f"is {settings.data_parallel_size}, use 1 or --engine vllm")
        import torch
        from transformers import AutoTokenizer

        if dtype is not None:
            settings = replace(settings, dtype=dtype)
        self.settings = settings
        self._torch = torch
        path = resolve_model(model)
        self.model_id = model
        self.model_path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self._dtype = getattr(torch, "bfloat16" if settings.dtype == "auto" else settings.dtype)
        self._model = self._load(path)
        self.vocab_size = int(self._model.get_input_embeddings().num_embeddings)
        # The tighter of the asked length and the model's own context.
        limits = [n for n in (settings.max_model_len,
                              getattr(self._model.config, "max_position_embeddings", None)) if n]
        self.max_model_len = int(min(limits))

    @property
    def score_identity(self) -> dict[str, str]:
        return {"engine": type(self).__name__, "dtype": str(self.settings.dtype)}

    def _load(self, path: str):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=self._dtype)
        model.eval()
        return model

    async def warmup(self) -> None:
        return None

    async def load_adapter(self, adapter: Adapter) -> None:
        raise InvalidRequest("the transformers engine serves no LoRA adapters: use --engine vllm")

    async def loaded_adapters(self) -> list[str]:
        return []

    async def load_weights(self, path: str) -> None:
        self._model = self._load(path)

    async def score(self, sequences: Sequence[Sequence[int]], start_indices: Sequence[int],
                    adapter: Adapter | None = None):
        torch = self._torch
        out = []
        with torch.inference_mode():
            for seq, start in zip(sequences, start_indices):
                if start < 1:
                    raise ValueError("start index must be >= 1: position 0 has no logprob")
                ids = torch.tensor([list(seq)])
                logits = self._model(ids).logits[0, start - 1 : len(seq) - 1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                target = ids[0, start:]
                out.append(logprobs.gather(1, target[:, None])[:, 0].double().numpy())
        return out

    async def generate(self, prompts, params: GenerationParams,
                       adapter: Adapter | None = None) -> list[Generation]:
        torch = self._torch
        result = []
        with torch.inference_mode():
            for prompt in prompts:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                sample = params.temperature > 0
                ids = torch.tensor([list(prompt)])
                gen = self._model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=params.max_tokens,
                    do_sample=sample,
                    temperature=params.temperature if sample else None,
                    # Plain temperature sampling, as vLLM does: no top-k/top-p from the
                    # model's generation_config.
                    top_p=1.0 if sample else None,
                    top_k=0 if sample else None,
                    pad_token_id=self.tokenizer.eos_token_id,
                )[0, len(prompt):].tolist()
                result.append(self._cut_at_stop(gen, params.stop))
        return result

    def _cut_at_stop(self, tokens: list[int], stop: Sequence[str]) -> Generation:
        # Same contract as the vLLM engine: the stop string ends the output and is kept in it.
        eos = self.tokenizer.eos_token_id
        if eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for k in range(1, len(tokens) + 1):
            partial = self.tokenizer.decode(tokens[:k], skip_special_tokens=True)
            hit = min((partial.find(s) for s in stop if s in partial), default=-1)
            if hit >= 0:
                end = hit + len(next(s for s in stop if partial.find(s) == hit))
                return Generation(partial[:end], tuple(tokens[:k]), "stop")
        finished = bool(tokens) and tokens[-1] == eos
        return Generation(text, tuple(tokens), "stop" if finished else "length")

    async def check_health(self) -> None:
        pass  # in-process: if it is dead, so is this process

    def unfinished_requests(self) -> int:
        return 0  # calls run to completion inside the awaiting coroutine

    async def close(self) -> None:
        self._model = None
