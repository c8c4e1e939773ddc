"""The algorithm settings a batch was scored with (τ+, τ-, κ, λ_eff, γ_eff, w), as far as its file
tells them, each with where it came from.

A saved line holds the anneal weight w but neither the request's `ScoringConfig` nor the margins
the gate used (a ScoreResponse's `stats.positive.tau` / `stats.negative.tau`). So each value is
taken, in this order, from:

- "file": the line carries it (`stats.positive.tau`, `stats.negative.tau`; `config`, the
  request's ScoringConfig overrides);
- "fitted": recovered from the gated tokens themselves. On a gated token of the hint branch
  Â/A - 1 = λ_eff·(Î - τ+) (docs/method.md steps 8 and 10): a line in Î whose slope is λ_eff
  and whose root is τ+; on the critique branch the same with γ_eff, τ- and -Î. Two distinct CIG
  values among a branch's gated tokens fix both; the fit is kept only if every gated token lies
  on the line, so a file it does not describe falls back to the defaults;
- "default": ScoringConfig's default, times w for λ_eff and γ_eff.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from amr_client.schemas import ScoringConfig

# Â/A - 1 is computed from float64 JSON numbers: a true line fits to ~1e-15.
FIT_TOLERANCE = 1e-6


class GateSamples:
    """One branch's gated tokens: x = Î (hints) or -Î (critiques), y = Â/A - 1."""

    def __init__(self) -> None:
        self.x: list[np.ndarray] = []
        self.y: list[np.ndarray] = []

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.size:
            self.x.append(x)
            self.y.append(y)

    def fit(self) -> tuple[float, float, int] | None:
        """(scale_eff, tau, tokens) when the gated tokens lie on one line, else None."""
        if not self.x:
            return None
        x, y = np.concatenate(self.x), np.concatenate(self.y)
        if np.ptp(x) < 1e-9:
            return None  # one CIG value: slope and root are not both determined
        slope, intercept = np.polyfit(x, y, 1)
        if not slope > 0:
            return None
        if np.abs(y - (slope * x + intercept)).max() > FIT_TOLERANCE * (1 + np.abs(y).max()):
            return None
        return float(slope), float(-intercept / slope), int(x.size)


def _value(value: float | None, source: str, note: str) -> dict[str, Any]:
    return {"value": value, "source": source, "note": note}


def batch_settings(head: dict[str, Any], positive: GateSamples, negative: GateSamples,
                   max_abs_cig: float) -> dict[str, Any]:
    """τ+, τ-, κ, λ_eff, γ_eff and w of one batch, each as {value, source, note}.

    `head` is the first line's head (its `config` and `stats` when it has them); `positive` and
    `negative` the gated tokens of each branch; `max_abs_cig` the largest |Î| in the batch."""
    overrides = head.get("config") or {}
    config = ScoringConfig.model_validate(overrides) if overrides else ScoringConfig()
    stats = head.get("stats") or {}
    w = head.get("anneal_weight")
    weight = float(w) if isinstance(w, (int, float)) else None
    out: dict[str, Any] = {"anneal_weight": _value(weight, "file" if weight is not None else "missing",
                                                   "w, the anneal weight of this step")}
    if "kappa" in overrides:
        out["kappa"] = _value(config.kappa, "file", "in the file's config")
    elif max_abs_cig > config.kappa:
        # Î is clipped to ±κ, so a larger |Î| means this batch was scored with a larger κ.
        out["kappa"] = _value(None, "missing", f"not in the file; at least {max_abs_cig:.3g}, "
                                               f"above the default {config.kappa:g}")
    else:
        out["kappa"] = _value(config.kappa, "default", "ScoringConfig's, not in the file")
    for side, samples, tau_key, scale_key, eff_key in (
            ("positive", positive, "tau_pos", "lambda_pos", "lambda_eff"),
            ("negative", negative, "tau_neg", "gamma_neg", "gamma_eff")):
        fitted = samples.fit()
        branch = "hint" if side == "positive" else "critique"
        tau_in_stats = (stats.get(side) or {}).get("tau")
        if isinstance(tau_in_stats, (int, float)):
            out[tau_key] = _value(float(tau_in_stats), "file", "the margin the gate used (stats)")
        elif fitted:
            out[tau_key] = _value(fitted[1], "fitted", f"from the {fitted[2]} gated {branch} tokens")
        elif tau_key in overrides:
            out[tau_key] = _value(getattr(config, tau_key), "file", "in the file's config")
        else:
            out[tau_key] = _value(getattr(config, tau_key), "default", "ScoringConfig's, not in the file")
        scale = getattr(config, scale_key)
        if scale_key in overrides and weight is not None:
            out[eff_key] = _value(scale * weight, "file", f"{scale_key} {scale:g} (the file's config) x w")
        elif fitted:
            out[eff_key] = _value(fitted[0], "fitted", f"from the {fitted[2]} gated {branch} tokens")
        elif weight is not None:
            out[eff_key] = _value(scale * weight, "default", f"{scale_key} {scale:g} (ScoringConfig's) x w")
        else:
            out[eff_key] = _value(None, "missing", "no anneal weight in the file")
    return out
