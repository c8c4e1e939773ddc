"""Tables, JSON files and plots of benchmark results.

Every row is printed as a ratio against a baseline measured in the same run: absolute speeds on
a shared 2-core machine drift from run to run, ratios much less.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline or not math.isfinite(value):
        return None
    return value / baseline


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 100_000:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain-text table of `columns` from `rows`; missing cells print as '-'."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                    for i, (v, w) in enumerate(zip(values, widths)))
    out = [f"== {title}", line(columns), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def bars(path: Path, labels: Sequence[str], values: Sequence[float | None], *, title: str,
         ylabel: str, baseline: str | None = None) -> Path:
    """Horizontal bars, the baseline's bar in another colour, each bar labelled with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.5))
    shown = [v or 0.0 for v in values]
    colours = ["tab:orange" if label == baseline else "tab:blue" for label in labels]
    ax.barh(range(len(labels)), shown, color=colours)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(shown[i], i, f" {fmt(v)}", va="center", fontsize=8)
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scatter_fit(path: Path, x: Sequence[float], y: Sequence[float], fit: dict, *, title: str,
                xlabel: str, ylabel: str, labels: Sequence[str] = ()) -> Path:
    """Measured points and the fitted line y = slope * x + intercept."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=18)
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(label, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if x:
        lo, hi = min(x), max(x)
        ax.plot([lo, hi], [fit["slope"] * lo + fit["intercept"], fit["slope"] * hi + fit["intercept"]],
                color="tab:red", label=f"fit, R² = {fit['r2']:.3f}")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def linear_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least squares y = slope * x + intercept and R²; slope is seconds per token here."""
    n = len(x)
    if n < 2:
        return {"slope": None, "intercept": None, "r2": None, "points": n}
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_res = sum((b - (slope * a + intercept)) ** 2 for a, b in zip(x, y))
    ss_tot = sum((b - my) ** 2 for b in y)
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "points": n}


def least_squares(columns: dict[str, Sequence[float]], y: Sequence[float]) -> dict:
    """y = sum(coef[name] * column) + intercept by least squares, and R²."""
    import numpy as np

    names = list(columns)
    a = np.column_stack([np.asarray(columns[n], dtype=float) for n in names] + [np.ones(len(y))])
    target = np.asarray(y, dtype=float)
    if len(target) <= a.shape[1]:
        return {"coef": None, "intercept": None, "r2": None, "points": len(target)}
    solution, *_ = np.linalg.lstsq(a, target, rcond=None)
    residual = target - a @ solution
    ss_tot = float(((target - target.mean()) ** 2).sum())
    return {"coef": dict(zip(names, map(float, solution[:-1]))), "intercept": float(solution[-1]),
            "r2": 1 - float((residual ** 2).sum()) / ss_tot if ss_tot else 1.0,
            "points": len(target)}
