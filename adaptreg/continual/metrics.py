"""Continual-learning metrics over an accuracy matrix, in plain numpy.

``R[i][j]`` is the accuracy on task ``j``'s test split after onboarding task ``i`` (rows: steps,
columns: tasks, both in onboarding order). Entries that are not defined (``j > i``, a step a
strategy did not evaluate) are ``None`` or NaN. Every function returns ``None`` when its value
is not defined by the entries at hand -- never a made-up 0.0 (see docs/continual.md).

Definitions (``T`` tasks, last row ``T-1``):

* ACC (Lopez-Paz & Ranzato 2017, "GEM"): ``mean_j R[T-1][j]``.
* BWT (GEM): ``mean_{j < T-1} (R[T-1][j] - R[j][j])``; negative = forgetting.
* Forgetting (Chaudhry et al. 2018): ``mean_{j < T-1} (max_{l < T-1} R[l][j] - R[T-1][j])``,
  the max over the steps ``l >= j`` where task ``j`` had been seen.
* FWT (GEM): ``mean_{j > 0} (R[j-1][j] - b_j)``. GEM's ``b_j`` is a randomly initialised model;
  here ``b_j`` is the frozen-base linear probe's accuracy on task ``j`` (the issue asks for
  "FWT against the frozen-base probe"). ``R[j-1][j]`` is the accuracy on task ``j`` *before*
  training on it, which exists only for a strategy that can answer a task it has not seen
  (an adapter strategy has no head for a task it has not seen; the benchmark fills
  ``R[j-1][j]`` only where it measured it, see :mod:`adaptreg.continual.benchmark`), so FWT is
  ``None`` where those entries are missing.
* Probe gain (not in GEM, reported beside FWT): ``mean_j (R[j][j] - b_j)``, what learning each
  task with the strategy gains over the frozen-base probe right after it is learnt.

Averages skip undefined entries of the terms they need; a term whose inputs are undefined is
dropped, and a mean over no terms is ``None``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = [
    "as_matrix", "to_jsonable", "average_accuracy", "backward_transfer", "forgetting", "forward_transfer",
    "probe_gain", "accuracy_curve", "forgetting_curve", "bwt_curve", "summarize",
]


def as_matrix(R: Any) -> np.ndarray:
    """``R`` (nested lists with ``None``, or an array) as a float array with NaN for undefined.

    Must be square (steps == tasks) or have as many columns as rows at least (a partial run
    gives fewer rows than columns).
    """
    rows = [[np.nan if v is None else float(v) for v in row] for row in R]
    if not rows:
        return np.zeros((0, 0))
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    if out.shape[0] > out.shape[1]:
        raise ValueError(f"R has {out.shape[0]} rows (steps) but {out.shape[1]} columns (tasks); need rows <= columns")
    return out


def to_jsonable(R: Any) -> list[list[float | None]]:
    """NaN -> None, numpy floats -> Python floats: what results.json and MLflow tables store."""
    M = as_matrix(R)
    return [[None if np.isnan(v) else float(v) for v in row] for row in M]


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _last(M: np.ndarray, step: int | None) -> int:
    return M.shape[0] - 1 if step is None else step


def average_accuracy(R: Any, step: int | None = None) -> float | None:
    """ACC after ``step`` (default: the last row): mean of ``R[step][j]`` over tasks ``j <= step``."""
    M = as_matrix(R)
    if M.size == 0:
        return None
    t = _last(M, step)
    return _mean(M[t, : t + 1])


def backward_transfer(R: Any, step: int | None = None) -> float | None:
    """BWT after ``step``: mean over ``j < step`` of ``R[step][j] - R[j][j]``; None for step 0."""
    M = as_matrix(R)
    if M.size == 0:
        return None
    t = _last(M, step)
    return _mean([M[t, j] - M[j, j] for j in range(t)])


def forgetting(R: Any, step: int | None = None) -> float | None:
    """Chaudhry forgetting after ``step``: mean over ``j < step`` of ``max_{j<=l<step} R[l][j] - R[step][j]``."""
    M = as_matrix(R)
    if M.size == 0:
        return None
    t = _last(M, step)
    terms = []
    for j in range(t):
        past = M[j:t, j]
        past = past[~np.isnan(past)]
        if past.size and not np.isnan(M[t, j]):
            terms.append(float(past.max() - M[t, j]))
    return _mean(terms)


def forward_transfer(R: Any, baseline: Sequence[float | None] | None) -> float | None:
    """GEM FWT: mean over ``j > 0`` of ``R[j-1][j] - b_j`` (``b_j``: frozen-base probe accuracy)."""
    M = as_matrix(R)
    if baseline is None or M.shape[0] < 2:
        return None
    b = [np.nan if v is None else float(v) for v in baseline]
    return _mean([M[j - 1, j] - b[j] for j in range(1, min(M.shape[0], len(b)))])


def probe_gain(R: Any, baseline: Sequence[float | None] | None) -> float | None:
    """Mean over ``j`` of ``R[j][j] - b_j``: accuracy right after learning each task minus the probe's."""
    M = as_matrix(R)
    if baseline is None or M.shape[0] < 1:
        return None
    b = [np.nan if v is None else float(v) for v in baseline]
    return _mean([M[j, j] - b[j] for j in range(min(M.shape[0], len(b)))])


def accuracy_curve(R: Any) -> list[float | None]:
    """ACC after each step (one value per row)."""
    M = as_matrix(R)
    return [average_accuracy(M, t) for t in range(M.shape[0])]


def forgetting_curve(R: Any) -> list[float | None]:
    """Forgetting after each step (None at step 0: nothing to forget yet)."""
    M = as_matrix(R)
    return [forgetting(M, t) for t in range(M.shape[0])]


def bwt_curve(R: Any) -> list[float | None]:
    """BWT after each step (None at step 0)."""
    M = as_matrix(R)
    return [backward_transfer(M, t) for t in range(M.shape[0])]


def summarize(R: Any, baseline: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Every metric of one strategy's ``R``: final values and per-step curves, ``None`` where undefined."""
    M = as_matrix(R)
    return {
        "acc": average_accuracy(M),
        "bwt": backward_transfer(M),
        "forgetting": forgetting(M),
        "fwt": forward_transfer(M, baseline),
        "probe_gain": probe_gain(M, baseline),
        "acc_curve": accuracy_curve(M),
        "forgetting_curve": forgetting_curve(M),
        "bwt_curve": bwt_curve(M),
        "final_row": to_jsonable(M)[-1] if M.shape[0] else [],
    }
