"""Output formatting of registry listings: fixed-width tables and a bar chart."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

from .records import is_number


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width text table (floats to 4 decimals, None as '-')."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v)) or "-"
        if isinstance(v, dict):
            return ",".join(f"{k}={x}" for k, x in v.items()) or "-"
        return str(v) if v != "" else "-"

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def plot_compare(rows: list[dict[str, Any]], metric: str, path: str | os.PathLike) -> Path:
    """A horizontal bar chart of ``metric`` per version (a matplotlib Figure; no pyplot, no backend change)."""
    from matplotlib.figure import Figure

    pts = [(f"{r['task']} v{r['version']}", float(r[metric])) for r in rows if is_number(r.get(metric))]
    if not pts:
        raise ConfigError(f"nothing to plot: no version has a value for {metric!r}")
    pts.reverse()  # best at the top
    fig = Figure(figsize=(6.0, 1.0 + 0.3 * len(pts)), dpi=100)
    ax = fig.subplots()
    ax.barh([p[0] for p in pts], [p[1] for p in pts], color="#4c72b0")
    for i, (_, v) in enumerate(pts):
        ax.text(v, i, f" {v:.4g}", va="center", fontsize=7)
    ax.set_xlabel(metric)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
