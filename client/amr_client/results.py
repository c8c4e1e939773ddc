"""`ScoreResult`: a `ScoreResponse` plus the shapes a trainer feeds to its loss.

Order everywhere is the request's: groups in order, then rollouts in order within a group, so
row `i` of every helper is the i-th rollout of the flattened request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from amr_client.schemas import BatchStats, ScoredGroup, ScoreResponse

if TYPE_CHECKING:  # torch is optional: the base install has no torch
    import torch

__all__ = ["ScoreResult"]


class ScoreResult:
    """The answer to one `score()` call.

    `len(result)` is the number of groups and `for group in result` walks them in request order.
    `request_id` is the server's `X-Request-ID`, the id to quote when reporting a problem.
    """

    def __init__(self, response: ScoreResponse, *, request_id: str | None = None):
        self.response = response
        self.request_id = request_id

    @property
    def groups(self) -> list[ScoredGroup]:
        return self.response.groups

    def __len__(self) -> int:
        return len(self.response.groups)

    def __iter__(self) -> Iterator[ScoredGroup]:
        return iter(self.response.groups)

    @property
    def stats(self) -> BatchStats:
        return self.response.stats

    @property
    def model(self) -> str:
        return self.response.model

    @property
    def policy_version(self) -> str:
        """The full-weight version that scored the whole request."""
        return self.response.policy_version

    @property
    def adapter(self) -> str | None:
        """The LoRA adapter on top, if the request named one."""
        return self.response.adapter

    @property
    def anneal_weight(self) -> float:
        return self.response.anneal_weight

    def advantages(self) -> list[list[float]]:
        """Â_i,t per rollout, one list per rollout (ragged), in request order."""
        return [list(r.advantages) for g in self.response.groups for r in g.rollouts]

    def advantages_numpy(self, dtype: Any = np.float32) -> list[np.ndarray]:
        """`advantages()` as one 1-D array (T_i,) per rollout."""
        return [np.asarray(r.advantages, dtype=dtype) for g in self.response.groups for r in g.rollouts]

    def base_advantages(self) -> list[float]:
        """A_i, the GRPO advantage of each rollout, in request order."""
        return [r.base_advantage for g in self.response.groups for r in g.rollouts]

    def cig(self) -> list[list[float]]:
        """The clipped CIG Î_t per rollout (ragged, request order); needs `returns={"cig": True}`."""
        return [list(values) for values in self._returned("cig")]

    def gated(self) -> list[list[bool]]:
        """Where the gate opened (Δ_t > 0) per rollout; needs `returns={"cig": True}`."""
        return [list(values) for values in self._returned("gated")]

    def _returned(self, name: str) -> list[list]:
        rows = [getattr(r, name) for g in self.response.groups for r in g.rollouts]
        if any(row is None for row in rows):
            raise ValueError(f"this answer carries no `{name}`: ask for it with "
                             f'score(..., returns={{"cig": True}})')
        return rows

    def advantages_padded_numpy(self, pad_value: float = 0.0, dtype: Any = np.float32, *,
                                width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Advantages right-padded to `width` tokens (default: the longest rollout's).

        Returns `(advantages, mask)`, both (B, T) with B = rollouts in the request and
        T = `width`; `mask` is True on real tokens, and padded positions hold `pad_value`. A
        `width` shorter than a rollout raises: cutting advantages off would train on less than
        was scored.
        """
        rows = self.advantages()
        longest = max((len(r) for r in rows), default=0)
        if width is None:
            width = longest
        elif width < longest:
            raise ValueError(f"width={width} is shorter than the longest rollout ({longest} tokens)")
        values = np.full((len(rows), width), pad_value, dtype=np.float64)  # (B, T)
        mask = np.zeros((len(rows), width), dtype=bool)  # (B, T)
        for i, row in enumerate(rows):
            values[i, :len(row)] = row
            mask[i, :len(row)] = True
        return values.astype(dtype, copy=False), mask

    def advantages_padded(self, pad_value: float = 0.0, dtype: "torch.dtype | None" = None, *,
                          width: int | None = None,
                          device: "torch.device | str | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
        """`advantages_padded_numpy` as torch tensors, on `device` (default: the CPU); `dtype`
        defaults to torch.float32. Pass your batch's completion length as `width` to get the
        same (B, T) as the loss's other tensors."""
        try:
            import torch
        except ImportError as exc:
            raise ImportError(
                "ScoreResult.advantages_padded needs torch, which the amr-sd client does not "
                "install: `pip install torch`, or use advantages_padded_numpy()."
            ) from exc
        values, mask = self.advantages_padded_numpy(pad_value, np.float64, width=width)
        return (torch.from_numpy(values).to(device=device, dtype=dtype or torch.float32),
                torch.from_numpy(mask).to(device=device))

    def __repr__(self) -> str:
        rollouts = sum(len(g.rollouts) for g in self.response.groups)
        return (f"ScoreResult(model={self.model!r}, step={self.response.step}, "
                f"groups={len(self.response.groups)}, rollouts={rollouts}, "
                f"anneal_weight={self.anneal_weight}, request_id={self.request_id!r})")
