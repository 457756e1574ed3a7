"""Route a text to the task it belongs to, from frozen-base features, or abstain.

The router is a nearest-class-mean rule on features pooled from a few frozen-base layers (one
block per layer, block-diagonal covariance: distances add over layers). Each task's distances use
its own within-class covariance blended with the pooled one, ``(1 - own_covariance) * pooled +
own_covariance * own`` (regularised discriminant analysis; 0 = one shared covariance, the LDA
rule), and the choice of task adds ``log_det`` times the blend's log-determinant. It keeps only
compact statistics per task: each class's count and mean, and the task's within-class scatter
matrix per block. The pooled covariance is the sum of the tasks' scatters, so
:meth:`Router.add_task` never needs an earlier task's data.

Text surface: by default the features end with a small block of character statistics of the raw
text (:func:`surface_features`: length, and the shares of capitals, digits, punctuation, line
breaks, spaces, non-ASCII characters and "#", on a log scale, plus how the text starts and ends,
and whether it opens with a header field such as ``Subject:``), its distance weighted by
``surface``. A mean-pooled uncased sentence embedding sees topic, not genre or form: it cannot
tell a mail from a newsgroup post on the same subject, or "what's my balance" typed in lower case
from the same question in a banking app's log, which the surface block can.

Abstention: a row whose squared Mahalanobis distance to its nearest class mean is far above what
that task's held-out rows show is routed ``"unknown"``. Calibration uses training data only
(never test data): when a task is added, its rows are cross-fitted (each fold measured against
statistics that never saw it), and the ``quantile`` of those held-out distances over their mean is
stored (a shape factor). At routing time that factor times the task's expected held-out distance
under the *current* pooled covariance (the mean in-sample distance ``trace(Wᵀ S_t W) / n_t``, exact
from the stored scatter, with a leave-one-out Sherman-Morrison correction to held-out)
is the task's calibrated quantile. ``route_score`` is the distance over it: 1.0 = the edge of
what held-out rows of the task show; above ``threshold`` (default ``DEFAULT_THRESHOLD`` = 1.0)
means abstain. See docs/composition.md.

Saved as ``router.safetensors`` (arrays) + ``router.json`` (parameters, task and label names);
no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .._util import dump_json
from ..errors import ConfigError, DataError, IntegrityError, NotFittedError

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
ROUTER_FILE = "router.safetensors"
ROUTER_JSON = "router.json"
ROUTER_SCHEMA = 2


def _oas(cov: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Oracle-approximating shrinkage towards a scaled identity (Chen et al. 2010; sklearn's OAS)."""
    p = cov.shape[0]
    mu = float(np.trace(cov)) / p
    alpha = float(np.mean(cov ** 2))
    num = alpha + mu ** 2
    den = (n + 1.0) * (alpha - mu ** 2 / p)
    s = 1.0 if den <= 0 else min(num / den, 1.0)
    return (1.0 - s) * cov + s * mu * np.eye(p), s


DEFAULT_THRESHOLD = 1.0
# Weight of the text-surface block's distance (0 = no surface block). Chosen on held-out training
# rows of the 8-task stream (`benchmarks/router_rules.py --surface`, docs/composition.md).
DEFAULT_SURFACE = 4.0
# Which statistics the surface block holds (:func:`surface_features`): version 1, the first ten;
# version 2 adds two more (a hashtag share and a leading header field), chosen on held-out training
# rows (`benchmarks/router_rules.py --surface-version 1,2`, docs/composition.md). Routers saved before
# versions existed load as version 1 and keep featurizing as they were fitted.
DEFAULT_SURFACE_VERSION = 2
SURFACE_DIMS_BY_VERSION = {1: 10, 2: 12}
SURFACE_DIMS = SURFACE_DIMS_BY_VERSION[DEFAULT_SURFACE_VERSION]
# the columns that are log shares (in [log eps, log(1 + eps)]) and 0/1 flags, per version
_SURFACE_SHARES = {1: list(range(1, 7)), 2: list(range(1, 7)) + [10]}
_SURFACE_FLAGS = {1: [7, 8, 9], 2: [7, 8, 9, 11]}
_HEADER = re.compile(r"[A-Z][\w-]{1,20}: ")  # "Subject: ", "From: ": a mail, post or log line's field
_SURFACE_CHARS = 2048  # the shares are read from a text's first characters (its length from all of it)
_SURFACE_EPS = 1e-3
# Added to the surface block's variances: no surface feature is trusted beyond the spread of a fair
# coin (0.25), so a feature that never varied in training (every text lower case) costs a row that
# breaks the pattern a bounded distance rather than an unbounded one.
_SURFACE_FLOOR = 0.25
# Inside the trunk of the default 2 adapted layers (hidden state -4 = output of layer n-3, one below
# the trunk's output), at the onboarding length cap with onboarding's default (head) truncation:
# routing reads the trunk pass that prediction runs anyway. Chosen on validation rows
# (docs/composition.md): 0.84 % routing errors, as low as any set inside the trunk.
DEFAULT_LAYERS = (-4,)
DEFAULT_MAX_LENGTH = 128
# Regularised discriminant analysis: each task's own covariance weight, and its log-determinant's
# weight in the choice of task. Chosen on held-out training rows (`benchmarks/router_rules.py --own`).
DEFAULT_OWN_COVARIANCE = 0.1
DEFAULT_LOG_DET = 0.5
# The task score is a tempered mixture over the task's classes (soft nearest class mean) plus the
# class prior; temperature chosen on held-out training rows of the 8-task stream (docs/composition.md)
DEFAULT_CLASS_TEMPERATURE = 8.0
# With each task's own covariance, ``route`` measures a row under the own covariances of only its
# nearest few tasks by the shared one (the blend moves distances a little, not across the field),
# so routing costs one shared distance per class plus this many per-task whitenings, whatever the
# number of tasks; with this many tasks or fewer it is the full rule.
ROUTE_CANDIDATES = 4


def _surface_dims(version: Any) -> int:
    """Width of surface block ``version``; an unknown version is refused with the choices."""
    if version not in SURFACE_DIMS_BY_VERSION:
        raise ConfigError(f"surface_version == {version!r} is unknown: use one of {sorted(SURFACE_DIMS_BY_VERSION)}")
    return SURFACE_DIMS_BY_VERSION[version]


def surface_features(texts: list[str], version: int = DEFAULT_SURFACE_VERSION) -> np.ndarray:
    """Character statistics of each raw text [rows, SURFACE_DIMS_BY_VERSION[version]]: log length,
    log share (plus 1e-3) of capitals among ASCII letters, of digits, ASCII punctuation, line
    breaks, spaces and non-ASCII characters (the shares over the first 2,048 characters), and
    whether it starts with a capital, ends with "?" or ends with "." or "!". Version 2 adds the log
    share of "#" (hashtags) and whether the text starts with a header field (``Subject: ``,
    ``From: ``: a capitalised word and a colon)."""
    out = np.zeros((len(texts), _surface_dims(version)))
    for r, text in enumerate(texts):
        t = str(text)
        head = t[:_SURFACE_CHARS]
        c = np.frombuffer(head.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # code points, vectorised
        n = max(len(c), 1)
        upper = int(((c >= 65) & (c <= 90)).sum())
        letters = upper + int(((c >= 97) & (c <= 122)).sum())
        digits = int(((c >= 48) & (c <= 57)).sum())
        spaces = int(((c >= 9) & (c <= 13)).sum() + (c == 32).sum())
        other = int((c > 127).sum())
        punct = len(c) - letters - digits - spaces - other
        tail = t.rstrip()[-1:]
        out[r, 0] = math.log1p(len(t))
        out[r, 1:7] = np.log(np.array([upper / max(letters, 1), digits / n, punct / n, int((c == 10).sum()) / n,
                                       spaces / n, other / n]) + _SURFACE_EPS)
        out[r, 7:10] = (head[:1].isupper(), tail == "?", tail in (".", "!"))
        if version >= 2:
            out[r, 10] = math.log(int((c == 35).sum()) / n + _SURFACE_EPS)
            out[r, 11] = _HEADER.match(head) is not None
    return out


def _layers(layers: Any) -> tuple[int, ...]:
    return (int(layers),) if isinstance(layers, (int, np.integer)) else tuple(int(v) for v in layers)


class Router:
    """Task router on frozen-base features: nearest class mean, shrunk pooled + own covariance, abstention.

    Parameters
    ----------
    threshold : float or None
        Abstain when ``route_score`` (distance / calibrated quantile) exceeds it; None =
        ``DEFAULT_THRESHOLD`` (1.0: refuse what lies beyond the ``quantile`` of the task's own
        held-out distances, so about 1 % of genuine rows; docs/composition.md has the trade-off).
    quantile : float
        Which quantile of each task's held-out (cross-fitted) distances defines ``route_score == 1``.
    shrinkage : "oas" or float in [0, 1]
        Shrinkage of the pooled within-class covariance towards a scaled identity.
    normalize : bool
        L2-normalise each layer's features first (cosine geometry of sentence embeddings).
    max_length : int
        Token length the routing features are computed at (recorded so that callers encode
        texts the same way at fit and route time; shorter = cheaper routing).
    layers : tuple of int
        Which frozen-base hidden states the routing features pool (-1 = last layer, -2 = the one
        before); features are the layers' pooled states side by side, one block each, and the
        distance is the sum of the blocks' Mahalanobis distances (a block-diagonal covariance).
        Default (-4,): inside the trunk of a base with 2 adapted layers, chosen on validation data
        (docs/composition.md).
    folds : int
        Cross-fitting folds that calibrate a new task's held-out distances when it is added.
    truncation : "head" or "head+tail"
        How texts longer than ``max_length`` are cut (:func:`adaptreg.trunk.tokenize`).
    surface : float
        Weight of the text-surface block's distance (:func:`surface_features`, its own shrunk
        covariance); 0 = layer features only. Routers saved before it existed load with 0.
    surface_version : int
        Which statistics the surface block holds (:func:`surface_features`; 1: ten, 2: twelve, the
        default). Routers saved before versions existed load as 1 and featurize as they were fitted.
    own_covariance : float in [0, 1]
        Weight of each task's own within-class covariance in the covariance its distances use:
        ``(1 - a) * pooled + a * own`` (regularised discriminant analysis, Friedman 1989, between
        the shared covariance of LDA at 0 and one covariance per task at 1). Routers saved before
        it existed load with 0.
    log_det : float
        Weight of each task's log-determinant (relative to the pooled covariance's) added to its
        distance when choosing the task (the Gaussian likelihood's volume term, which favours the
        tighter task); only matters with ``own_covariance > 0``. The route score (abstention) is
        the distance alone.
    class_temperature : float
        How a task's classes add up when choosing the task. 0: the distance to its nearest class
        mean. ``T > 0``: ``-2T log sum_y exp(-d_y / 2T) + 2 log K`` over its K classes' squared
        distances ``d_y`` (a mixture of its classes, tempered by ``T``, each class with prior 1/K of
        the task's): a row between several classes of one task counts for that task, and a task
        with many classes gets no edge from their number alone. T -> 0 is the nearest class mean
        plus the prior. The route score (abstention) stays the nearest class's distance. Routers
        saved before it existed load with 0.
    """

    def __init__(self, threshold: float | None = None, quantile: float = 0.99, shrinkage: str | float = "oas",
                 normalize: bool = True, max_length: int = DEFAULT_MAX_LENGTH, layers: Any = DEFAULT_LAYERS, folds: int = 5,
                 truncation: str = "head", surface: float = DEFAULT_SURFACE,
                 own_covariance: float = DEFAULT_OWN_COVARIANCE, log_det: float = DEFAULT_LOG_DET,
                 class_temperature: float = DEFAULT_CLASS_TEMPERATURE,
                 surface_version: int = DEFAULT_SURFACE_VERSION):
        self.threshold = threshold
        self.quantile = quantile
        self.shrinkage = shrinkage
        self.normalize = normalize
        self.max_length = max_length
        self.layers = layers
        self.folds = folds
        self.truncation = truncation
        self.surface = surface
        self.own_covariance = own_covariance
        self.log_det = log_det
        self.class_temperature = class_temperature
        self.surface_version = surface_version

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "quantile": self.quantile, "shrinkage": self.shrinkage,
                "normalize": self.normalize, "max_length": self.max_length,
                "layers": list(self.feature_layers), "folds": self.folds, "truncation": self.truncation,
                "surface": self.surface, "own_covariance": self.own_covariance, "log_det": self.log_det,
                "class_temperature": self.class_temperature, "surface_version": self.surface_version}

    def _check_params(self) -> None:
        if self.threshold is not None and not float(self.threshold) > 0:
            raise ConfigError(f"threshold == {self.threshold}, must be > 0 (or None for the default {DEFAULT_THRESHOLD})")
        if not 0.5 <= float(self.quantile) < 1.0:
            raise ConfigError(f"quantile == {self.quantile}, must be in [0.5, 1)")
        if self.shrinkage != "oas" and not (isinstance(self.shrinkage, (int, float)) and 0 <= float(self.shrinkage) <= 1):
            raise ConfigError(f"shrinkage == {self.shrinkage!r}, must be 'oas' or a number in [0, 1]")
        if int(self.max_length) < 8:
            raise ConfigError(f"max_length == {self.max_length}, must be >= 8")
        if not self.feature_layers:
            raise ConfigError("layers is empty; give at least one hidden-state index, e.g. (-2,)")
        if self.truncation not in ("head", "head+tail"):
            raise ConfigError(f"truncation {self.truncation!r} is unknown: use head or head+tail")
        if int(self.folds) < 2:
            raise ConfigError(f"folds == {self.folds}, must be >= 2")
        if not (isinstance(self.surface, (int, float)) and 0 <= float(self.surface) < math.inf):
            raise ConfigError(f"surface == {self.surface!r}, must be a number >= 0 (0 = no text-surface block)")
        _surface_dims(self.surface_version)
        if not (isinstance(self.own_covariance, (int, float)) and 0 <= float(self.own_covariance) <= 1):
            raise ConfigError(f"own_covariance == {self.own_covariance!r}, must be a number in [0, 1] "
                              "(0 = one shared covariance)")
        if not (isinstance(self.log_det, (int, float)) and 0 <= float(self.log_det) < math.inf):
            raise ConfigError(f"log_det == {self.log_det!r}, must be a number >= 0")
        if not (isinstance(self.class_temperature, (int, float)) and 0 <= float(self.class_temperature) < math.inf):
            raise ConfigError(f"class_temperature == {self.class_temperature!r}, must be a number >= 0 "
                              "(0 = nearest class mean)")

    def feature_key(self) -> tuple:
        """What decides a row's routing features: two routers with the same key featurize alike."""
        return (int(self.max_length), self.feature_layers, self.truncation,
                int(self.surface_version) if self.surface else 0)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """``layers`` as a tuple of hidden-state indices (an int is accepted as one layer)."""
        return _layers(self.layers)

    def features(self, base: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Frozen-base routing features of ``texts``, at this router's ``max_length`` and ``layers``."""
        from ..base import encode

        x = encode(base, list(texts), int(self.max_length), batch_size, layer=self.feature_layers,
                   truncation=self.truncation)
        return self.with_surface(x, texts)

    def with_surface(self, features: Any, texts: list[str]) -> np.ndarray:
        """Layer features of ``texts`` (pooled by the caller, e.g. from a trunk pass) completed
        with the text-surface block when this router uses one; what :meth:`features` returns."""
        x = np.asarray(features)
        if not self.surface:
            return x
        if len(x) != len(texts):
            raise DataError(f"{len(x)} feature rows for {len(texts)} texts")
        return np.concatenate([x, surface_features(list(texts), self.surface_version).astype(x.dtype, copy=False)], 1)

    # ------------------------------------------------------------------ learning
    def fit(self, features_by_task: dict[str, Any], labels_by_task: dict[str, Any] | None = None) -> "Router":
        """Learn from every task at once (same result as calling :meth:`add_task` per task, in order)."""
        for attr in ("tasks_", "class_tasks_", "class_labels_", "counts_", "means_", "scatters_", "surface_scatters_",
                     "ratios_"):
            if hasattr(self, attr):
                delattr(self, attr)
        self._cache = None
        for task, x in features_by_task.items():
            self.add_task(task, x, None if labels_by_task is None else labels_by_task.get(task))
        return self

    def remove_task(self, task: str) -> "Router":
        """Forget one task's statistics (the others are untouched: statistics are per task)."""
        self._check_fitted()
        if task not in self.tasks_:
            raise ConfigError(f"task {task!r} is not routed (routed: {', '.join(self.tasks_)})")
        i = self.tasks_.index(task)
        keep = np.array([t != task for t in self.class_tasks_], dtype=bool)
        self.tasks_ = [t for t in self.tasks_ if t != task]
        self.class_tasks_ = [t for t, k in zip(self.class_tasks_, keep) if k]
        self.class_labels_ = [c for c, k in zip(self.class_labels_, keep) if k]
        self.counts_, self.means_ = self.counts_[keep], self.means_[keep]
        self.scatters_ = np.delete(self.scatters_, i, axis=0)
        self.surface_scatters_ = np.delete(self.surface_scatters_, i, axis=0)
        self.ratios_ = np.delete(self.ratios_, i)
        self._cache = None
        return self

    def add_task(self, task: str, features: Any, y: Any = None, replace: bool = False) -> "Router":
        """Add one task from its frozen-base training features (``y``: class per row, or None = one class).

        ``replace=True`` swaps out the statistics of a task that is already routed (a new version).
        """
        self._check_params()
        if replace and task in getattr(self, "tasks_", []):
            self.remove_task(task)
        x = self._prep(features)
        if len(x) < 2:
            raise DataError(f"task {task!r}: {len(x)} feature row(s), need at least 2 to route to it")
        if not hasattr(self, "tasks_"):
            self.tasks_: list[str] = []
            self.class_tasks_: list[str] = []
            self.class_labels_: list[str] = []
            self.counts_ = np.zeros(0, dtype=np.int64)
            self.means_ = np.zeros((0, x.shape[1]))
            _, blocks, d = self._blocks(x).shape
            self.scatters_ = np.zeros((0, blocks, d, d))
            self.surface_scatters_ = np.zeros((0, self._nsurf, self._nsurf))
            self.ratios_ = np.zeros(0)
        if x.shape[1] != self.means_.shape[1]:
            raise DataError(f"task {task!r}: features have {x.shape[1]} dimensions, the router has {self.means_.shape[1]}; "
                            "use the same base (and layers) for every task")
        if task in self.tasks_:
            raise ConfigError(f"task {task!r} is already routed; build a new Router to replace it")
        yy = np.zeros(len(x), dtype=np.int64) if y is None else np.asarray(y)
        if len(yy) != len(x):
            raise DataError(f"task {task!r}: {len(x)} feature rows but {len(yy)} labels")
        classes = sorted(set(yy.tolist()), key=str)
        counts, means, (scatter, s_scatter) = self._class_stats(x, yy, classes)
        # other versions of the same task are never served beside this one (and often hold the same
        # rows): leave them out of the "other tasks" the calibration pools, or it is not held out
        siblings = [i for i, t in enumerate(self.tasks_) if split_entry(t)[0] == split_entry(task)[0]]
        ratio = self._held_out_ratio(x, yy, classes, exclude=siblings)
        self.tasks_.append(task)
        self.class_tasks_ += [task] * len(classes)
        self.class_labels_ += [str(c) for c in classes]
        self.counts_ = np.concatenate([self.counts_, counts])
        self.means_ = np.vstack([self.means_, means])
        self.scatters_ = np.concatenate([self.scatters_, scatter[None]])
        self.surface_scatters_ = np.concatenate([self.surface_scatters_, s_scatter[None]])
        self.ratios_ = np.append(self.ratios_, ratio)
        self._cache = None
        return self

    @property
    def _nsurf(self) -> int:
        return _surface_dims(self.surface_version) if self.surface else 0

    def _blocks(self, x: np.ndarray) -> np.ndarray:
        """[rows, dims] -> [rows, blocks, dims per block] (one block per layer; the surface block,
        the last ``SURFACE_DIMS_BY_VERSION[surface_version]`` columns when used, is left out: :meth:`_surface_part`)."""
        b = len(self.feature_layers)
        x = x[..., : x.shape[-1] - self._nsurf]
        if x.shape[-1] % b or x.shape[-1] == 0:
            raise DataError(f"features have {x.shape[-1] + self._nsurf} dimensions, not what the router's {b} layers "
                            f"{list(self.feature_layers)}{' plus its text-surface block' if self._nsurf else ''} "
                            "give (not a multiple of the layer count); compute them with Router.features()")
        return x.reshape(*x.shape[:-1], b, x.shape[-1] // b)

    def _surface_part(self, x: np.ndarray) -> np.ndarray:
        return x[..., x.shape[-1] - self._nsurf:]

    def _per_block(self, layer_items: Any, surface_item: Any) -> list:
        """One item per distance block, in order: the layer blocks', then the surface block's if used."""
        return list(layer_items) + ([surface_item] if self._nsurf else [])

    def _class_stats(self, x: np.ndarray, yy: np.ndarray, classes: list) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(count per class, mean per class, within-class scatters: per layer block [blocks, d, d]
        and of the surface block [s, s])."""
        counts, means = [], []
        xb = self._blocks(x)
        scatter = np.zeros((xb.shape[1], xb.shape[2], xb.shape[2]))
        s_scatter = np.zeros((self._nsurf, self._nsurf))
        for c in classes:
            sel = yy == c
            m = x[sel].mean(0)
            d = self._blocks(x[sel] - m).transpose(1, 0, 2)  # [blocks, rows, d]
            scatter += d.transpose(0, 2, 1) @ d  # batched BLAS; einsum here was ~50x slower
            ds = self._surface_part(x[sel] - m)
            s_scatter += ds.T @ ds
            means.append(m)
            counts.append(int(sel.sum()))
        return np.asarray(counts, dtype=np.int64), np.asarray(means), (scatter, s_scatter)

    def _held_out_ratio(self, x: np.ndarray, yy: np.ndarray, classes: list, exclude: list[int] = ()) -> float:
        """``quantile`` over mean of the task's cross-fitted held-out distances (a shape factor).

        Each fold's rows are measured against class means and a pooled covariance (the routed
        tasks' scatters plus this task's other folds) that never saw them. At routing time the
        factor multiplies the task's expected held-out distance under the *current* covariance
        (:meth:`_state`), so it transfers when later tasks sharpen the covariance. ``exclude``:
        entries left out of the pooled statistics (other versions of the same task).
        """
        keep = [i for i in range(len(self.tasks_)) if i not in set(exclude)]
        cls_task = [self.tasks_.index(t) for t in self.class_tasks_]
        kept_cls = np.array([t in keep for t in cls_task], dtype=bool)
        n_other = int(self.counts_[kept_cls].sum()) - int(kept_cls.sum())
        other = (self.scatters_[keep].sum(0), self.surface_scatters_[keep].sum(0))  # zeros for the first task
        k = min(int(self.folds), len(x))
        fold = np.random.default_rng(0).permutation(len(x)) % k
        held = np.empty(len(x))
        for f in range(k):
            tr, te = fold != f, fold == f
            cls = [c for c in classes if (yy[tr] == c).any()]
            _, means, s_f = self._class_stats(x[tr], yy[tr], cls)
            dof_f = n_other + int(tr.sum()) - len(cls)
            pooled, _ = self._shrunk(tuple((o + s) / max(dof_f, 1) for o, s in zip(other, s_f)), dof_f)
            if self.own_covariance:
                dof_own = int(tr.sum()) - len(cls)
                w_f = self._blended(pooled, None, tuple(s / max(dof_own, 1) for s in s_f), dof_own)[0]
            else:
                w_f = [self._whiten(c)[0] for c in pooled]
            held[te] = self._d2(x[te], w_f, means).min(1)
        mean = float(held.mean())
        return float(np.quantile(held, self.quantile)) / mean if mean > 0 else 1.0

    def _shrunk(self, covs: tuple, n: int) -> tuple[list[np.ndarray], list[float]]:
        """Per block the shrunk covariance and its shrinkage: the layer blocks' (``covs[0]``,
        [blocks, d, d]), then the surface block's (``covs[1]``, [s, s]) if used; ``n`` = degrees
        of freedom behind ``covs``."""
        blocks = self._per_block(covs[0], covs[1])
        if n < 1:
            return [np.eye(len(c)) for c in blocks], [1.0] * len(blocks)
        out, shrinks = [], []
        for k, c in enumerate(blocks):
            if self.shrinkage == "oas":
                c, s = _oas(c, n)
            else:
                s = float(self.shrinkage)
                c = (1 - s) * c + s * (np.trace(c) / len(c)) * np.eye(len(c))
            if k == len(self.feature_layers):  # the surface block
                c = c + _SURFACE_FLOOR * np.eye(len(c))
            out.append(c)
            shrinks.append(s)
        return out, shrinks

    @staticmethod
    def _whiten(c: np.ndarray) -> tuple[np.ndarray, float]:
        """(W with W Wᵀ = inverse of ``c``, log-determinant of ``c``)."""
        vals, vecs = np.linalg.eigh(c)
        vals = np.clip(vals, max(vals.max(), 1e-12) * 1e-8, None)
        return vecs / np.sqrt(vals), float(np.log(vals).sum())

    def _blended(self, pooled: list[np.ndarray], pooled_ld: list[float] | None, own_covs: tuple,
                 dof_own: int) -> tuple[list, list[float], float]:
        """One task's whiteners under ``(1 - a) * pooled + a * own`` per block (``pooled``: the
        shrunk pooled covariances, ``own_covs``: the task's unshrunk ones, ``dof_own`` degrees of
        freedom behind them), the own covariances' shrinkage, and the task's log-determinant
        term (weighted like the distances, relative to the pooled covariance's ``pooled_ld``; 0
        without it)."""
        a = float(self.own_covariance)
        if dof_own < 1:  # one row per class: no own covariance to speak of
            return [self._whiten(p)[0] for p in pooled], [1.0] * len(pooled), 0.0
        own, shrinks = self._shrunk(own_covs, dof_own)
        w, logdet = [], 0.0
        for k, (p, o, weight) in enumerate(zip(pooled, own, self._block_weights())):
            wb, ld = self._whiten((1 - a) * p + a * o)
            w.append(wb)
            if pooled_ld is not None:
                logdet += weight * (ld - pooled_ld[k])
        return w, shrinks, logdet

    def _block_weights(self) -> list[float]:
        return self._per_block([1.0] * len(self.feature_layers), float(self.surface))

    def _d2(self, x: np.ndarray, w: list[np.ndarray], means: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each mean, summed over blocks (the surface
        block's times ``surface``) [rows, means]."""
        xb, mb = self._blocks(x), self._blocks(means)
        parts = self._per_block([(xb[:, b], mb[:, b]) for b in range(xb.shape[1])],
                                (self._surface_part(x), self._surface_part(means)))
        d2 = np.zeros((len(x), len(means)))
        for (xp, mp), wb, weight in zip(parts, w, self._block_weights()):
            z, mz = xp @ wb, mp @ wb
            d2 += weight * ((z ** 2).sum(1)[:, None] - 2 * z @ mz.T + (mz ** 2).sum(1)[None])
        return np.maximum(d2, 0.0)

    def _prep(self, features: Any) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise DataError(f"features must be a 2-D array (rows x dims), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError("features contain NaN or inf")
        if self._nsurf and x.shape[1] > self._nsurf:
            sf = self._surface_part(x)
            lo = math.log(_SURFACE_EPS) - 1e-6
            shares, flags = sf[:, _SURFACE_SHARES[self.surface_version]], sf[:, _SURFACE_FLAGS[self.surface_version]]
            if not (np.isin(flags, (0.0, 1.0)).all() and (sf[:, 0] >= 0).all() and (shares >= lo).all()
                    and (shares <= math.log(1 + _SURFACE_EPS) + 1e-6).all()):
                raise DataError("features do not end with the router's text-surface block: compute them with "
                                "Router.features(base, texts) or Router.with_surface(x, texts), or build "
                                "Router(surface=0) for features of your own")
        if self.normalize:  # the layer blocks only: the surface block is on its own scale
            xb = self._blocks(x)
            xb = xb / np.clip(np.linalg.norm(xb, axis=-1, keepdims=True), 1e-12, None)
            x = np.concatenate([xb.reshape(len(x), xb.shape[1] * xb.shape[2]), self._surface_part(x)], 1)
        return x

    def _check_fitted(self) -> None:
        if not getattr(self, "tasks_", None):
            raise NotFittedError("This Router instance is not fitted yet. Call 'add_task' or 'fit' with frozen-base "
                                 "training features first (or `adaptreg route add TASK`)")

    def _state(self, entries: tuple[int, ...] | None = None) -> tuple[Any, np.ndarray]:
        """(per-block whiteners W, per-entry calibrated quantile of d²) for a set of entries
        (default: all), cached per set; W is shared by every entry, or with ``own_covariance``
        a list of each entry's own.

        Routing among a subset (the task versions being served) uses the covariance pooled over
        that subset only, so entries that are not served (older versions of a task, often fitted
        on the same rows) change nothing: routing a set equals a router built from that set alone.
        """
        idx = tuple(range(len(self.tasks_))) if entries is None else tuple(entries)
        if not isinstance(self._cache, dict):
            self._cache = {}
        if idx not in self._cache:
            cls_task = np.array([self.tasks_.index(t) for t in self.class_tasks_])
            sel = np.isin(cls_task, idx)
            n = int(self.counts_[sel].sum())
            dof = n - int(sel.sum())
            pooled, shrinks = self._shrunk((self.scatters_[list(idx)].sum(0) / max(dof, 1),
                                            self.surface_scatters_[list(idx)].sum(0) / max(dof, 1)), dof)
            whitened = [self._whiten(c) for c in pooled]
            shared, pooled_ld = [wl[0] for wl in whitened], [wl[1] for wl in whitened]
            a = float(self.own_covariance) if len(idx) > 1 else 0.0
            q, per_entry, offsets = np.empty(len(idx)), [], np.zeros(len(idx))
            for j, i in enumerate(idx):
                counts = self.counts_[cls_task == i]
                n_i, dof_i = int(counts.sum()), int(counts.sum()) - len(counts)
                n_c = max(float(counts.mean()), 2.0)
                own = self._per_block(self.scatters_[i], self.surface_scatters_[i])
                w, own_shrinks = shared, [1.0] * len(own)
                if a:
                    w, own_shrinks, offsets[j] = self._blended(
                        pooled, pooled_ld, (self.scatters_[i] / max(dof_i, 1), self.surface_scatters_[i] / max(dof_i, 1)), dof_i)
                    offsets[j] *= float(self.log_det)
                per_entry.append(w)
                held = 0.0
                for wb, sb, shrink, own_shrink, weight in zip(w, own, shrinks, own_shrinks, self._block_weights()):
                    # mean in-sample d² of the task's rows to their class mean = trace(Wᵀ S_t W) / n_t.
                    # Leaving a row out of the covariance is a rank-one downdate, c v vᵀ with
                    # c = (1 - a)(1 - s) / dof + a (1 - s_t) / dof_t, so by Sherman-Morrison its
                    # held-out distance is d² / (1 - c d²); leaving it out of its class mean scales d²
                    # by (n_c / (n_c - 1))².
                    c = (1.0 - a) * (1.0 - shrink) / max(dof, 1) + a * (1.0 - own_shrink) / max(dof_i, 1)
                    d_in = float(np.sum(wb * (sb @ wb))) / n_i
                    held += weight * d_in / max(1.0 - c * d_in, 0.05) * (n_c / (n_c - 1.0)) ** 2
                q[j] = self.ratios_[i] * held
            self._cache[idx] = (per_entry if a else shared, np.maximum(q, 1e-12), cls_task,
                                per_entry if a else None, offsets, shared)
        return self._cache[idx][:2]

    def _entry(self, idx: tuple[int, ...]) -> tuple:
        """The whole cached state of a set of entries (:meth:`_state`), held by the caller so that an
        ``add_task`` in another thread (which drops the cache) cannot pull it away mid-call."""
        while True:
            self._state(idx)
            cache = self._cache
            if isinstance(cache, dict) and idx in cache:
                return cache[idx]

    @property
    def threshold_(self) -> float:
        return DEFAULT_THRESHOLD if self.threshold is None else float(self.threshold)

    # ------------------------------------------------------------------ inference
    def task_distances(self, features: Any, entries: tuple[int, ...] | None = None) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each entry's nearest class mean
        [rows, entries] (``entries``: indices into ``tasks_``, ascending; default all), under the
        covariance pooled over those entries (blended with each entry's own, ``own_covariance``)."""
        self._check_fitted()
        x = self._prep(features)
        idx = tuple(range(len(self.tasks_))) if entries is None else tuple(entries)
        return self._distances(x, idx)

    def _distances(self, x: np.ndarray, idx: tuple[int, ...], candidates: int | None = None,
                   entry: tuple | None = None, choose: bool = False) -> Any:
        """:meth:`task_distances` of prepared rows; with ``candidates``, each row's distances under the
        entries' own covariances only for its ``candidates`` nearest entries by the shared covariance
        (by the choosing score, plus the log-determinant terms), ``inf`` for the others. ``entry``:
        the state to use (:meth:`_entry`; default the current one). ``choose``: return ``(distances,
        choosing scores)``, the latter the tempered class mixture of ``class_temperature``
        (:meth:`_reduce`; the distances themselves when it is 0), without the log-determinant terms."""
        _, _, cls_task, per_entry, offsets, shared = entry or self._entry(idx)
        if len(x) == 0:
            empty = np.full((0, len(idx)), np.inf)
            return (empty, empty) if choose else empty
        if per_entry is None:
            out, soft = self._shared_distances(x, idx, shared, cls_task)
            return (out, soft) if choose else out
        out, soft = np.full((len(x), len(idx)), np.inf), np.full((len(x), len(idx)), np.inf)
        if candidates is None or candidates >= len(idx):
            todo = [(j, slice(None)) for j in range(len(idx))]
        else:
            near = np.argsort(self._shared_distances(x, idx, shared, cls_task)[1] + offsets[None], 1)[:, :candidates]
            todo = [(j, np.flatnonzero((near == j).any(1))) for j in np.unique(near)]
        for j, rows in todo:
            mn, sc = self._reduce(self._d2(x[rows], per_entry[j], self.means_[cls_task == idx[j]]))
            out[rows, j], soft[rows, j] = mn[:, 0], sc[:, 0]
        return (out, soft) if choose else out

    def _reduce(self, d2: np.ndarray, starts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """[rows, classes] squared distances, each task's classes contiguous from ``starts`` (default:
        one task) -> (nearest class's distance, choosing score) [rows, tasks]: with
        ``class_temperature`` T > 0, ``-2T log sum_y exp(-d2_y / 2T) + 2 log K`` over each task's K classes."""
        starts = np.zeros(1, dtype=np.int64) if starts is None else starts
        mn = np.minimum.reduceat(d2, starts, axis=1)
        t = float(self.class_temperature)
        if not t:
            return mn, mn
        low = mn.min(1, keepdims=True)  # one shift per row: the nearest task's terms are <= 1, one of them 1
        with np.errstate(under="ignore", divide="ignore"):  # a far task's sum may underflow: score inf
            soft = low - 2.0 * t * np.log(np.add.reduceat(np.exp(-(d2 - low) / (2.0 * t)), starts, axis=1))
        return mn, soft + 2.0 * np.log(np.diff(np.r_[starts, d2.shape[1]]))[None]

    def _shared_distances(self, x: np.ndarray, idx: tuple[int, ...], w: list,
                          cls_task: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances to each entry's nearest class mean, choosing scores: :meth:`_reduce`) under the
        one shared covariance (whiteners ``w``)."""
        sel = np.isin(cls_task, idx)
        d2 = self._d2(x, w, self.means_[sel])
        owner = cls_task[sel]
        # an entry's classes are contiguous (add_task appends them together): vectorised reductions
        # per entry instead of a Python loop, so routing cost grows with classes, not tasks
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        if len(starts) != len(idx) or (owner[starts] != np.asarray(idx)).any():  # else put them in entry order
            order = np.concatenate([np.flatnonzero(owner == i) for i in idx])
            d2 = d2[:, order]
            starts = np.r_[0, np.cumsum([int((owner == i).sum()) for i in idx])[:-1]]
        return self._reduce(d2, starts)

    def decision_scores(self, features: Any) -> np.ndarray:
        """``route_score`` of each row for each task: distance / calibrated quantile (lower = closer)."""
        d = self.task_distances(features)
        return d / self._state()[1][None]

    def route(self, features: Any, threshold: float | None = None,
              tasks: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(task per row, ``"unknown"`` when abstaining; route_score per row, lower = more in-distribution).

        The task is the one with the lowest choosing score: its classes' squared distances, each
        task's measured under its blended covariance, reduced to one score by ``class_temperature``
        (the nearest class mean at 0, else the tempered class mixture), plus ``log_det`` times its
        log-determinant term (regularised discriminant analysis; with ``own_covariance=0`` and
        ``class_temperature=0`` the LDA rule), among the row's ``ROUTE_CANDIDATES`` best tasks by the
        shared covariance. The route score is the chosen task's nearest-class distance over its
        calibrated quantile; above ``threshold`` (default ``self.threshold_``) abstains.
        ``tasks`` restricts the candidates (e.g. to the tasks whose adapters are loaded).
        """
        self._check_fitted()
        thr = self.threshold_ if threshold is None else float(threshold)
        if thr <= 0:
            raise ConfigError(f"threshold == {thr}, must be > 0")
        idx = None
        if tasks is not None:
            missing = [t for t in tasks if t not in self.tasks_]
            if missing:
                raise ConfigError(f"the router does not know task(s) {missing}; it routes to {self.tasks_}")
            idx = tuple(sorted({self.tasks_.index(t) for t in tasks}))
        key = tuple(range(len(self.tasks_))) if idx is None else idx
        entry = self._entry(key)
        _, q, _, _, offsets, _ = entry
        d, soft = self._distances(self._prep(features), key, candidates=ROUTE_CANDIDATES, entry=entry, choose=True)
        names = self.tasks_ if idx is None else [self.tasks_[i] for i in idx]
        best = (soft + offsets[None]).argmin(1)
        score = d[np.arange(len(d)), best] / q[best]
        routed = [names[b] if s <= thr else UNKNOWN for b, s in zip(best, score)]
        return routed, score

    def predict(self, features: Any) -> list[str]:
        return self.route(features)[0]

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write router.safetensors + router.json into ``directory`` (created if needed)."""
        from safetensors.numpy import save_file

        self._check_fitted()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {"counts": self.counts_, "means": self.means_, "scatters": self.scatters_, "ratios": self.ratios_}
        if self._nsurf:
            arrays["surface_scatters"] = self.surface_scatters_
        save_file(arrays, str(d / ROUTER_FILE))
        from .._util import sha256_file

        dump_json({"schema_version": ROUTER_SCHEMA, "params": self.get_params(), "tasks": self.tasks_,
                   "class_tasks": self.class_tasks_, "class_labels": self.class_labels_,
                   "sha256": sha256_file(d / ROUTER_FILE)}, d / ROUTER_JSON)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Router":
        from safetensors.numpy import load_file

        from .._util import sha256_file

        d = Path(directory)
        if not (d / ROUTER_JSON).is_file() or not (d / ROUTER_FILE).is_file():
            raise IntegrityError(f"{d} is not a saved router: {ROUTER_JSON} or {ROUTER_FILE} is missing")
        meta = json.loads((d / ROUTER_JSON).read_text(encoding="utf-8"))
        if meta.get("schema_version") != ROUTER_SCHEMA:
            raise IntegrityError(f"{d} holds a router of schema {meta.get('schema_version')}, this adaptreg reads "
                                 f"schema {ROUTER_SCHEMA}; rebuild it with `adaptreg route add TASK... --rebuild`")
        if meta.get("sha256") and sha256_file(d / ROUTER_FILE) != meta["sha256"]:
            raise IntegrityError(f"{d / ROUTER_FILE} failed its sha256 check; the router was modified or truncated")
        known = {"threshold", "quantile", "shrinkage", "normalize", "max_length", "layers", "folds", "truncation",
                 "surface", "own_covariance", "log_det", "class_temperature", "surface_version"}
        # routers saved before `truncation` / `surface` / `own_covariance` / `class_temperature` /
        # `surface_version` existed read the head of each text, no surface block, one shared
        # covariance, the nearest class mean, the first ten surface statistics
        router = cls(**{"truncation": "head", "surface": 0.0, "own_covariance": 0.0, "log_det": 0.0,
                        "class_temperature": 0.0, "surface_version": 1,
                        **{k: v for k, v in meta["params"].items() if k in known}})
        arrays = load_file(str(d / ROUTER_FILE))
        router.tasks_ = list(meta["tasks"])
        router.class_tasks_ = list(meta["class_tasks"])
        router.class_labels_ = list(meta["class_labels"])
        router.counts_ = arrays["counts"].astype(np.int64)
        router.means_ = arrays["means"]
        router.scatters_ = arrays["scatters"]
        n_s = router._nsurf
        if n_s and "surface_scatters" not in arrays:
            raise IntegrityError(f"{d / ROUTER_FILE} has no surface_scatters array but its router uses a surface block")
        router.surface_scatters_ = arrays.get("surface_scatters", np.zeros((len(router.tasks_), n_s, n_s)))
        router.ratios_ = arrays["ratios"]
        router._cache = None
        return router

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        fitted = f", tasks={self.tasks_}" if getattr(self, "tasks_", None) else ""
        return f"Router({params}){fitted}"

    _cache: Any = None


def routing_report(router: Router, features_by_task: dict[str, Any], threshold: float | None = None,
                   entries: dict[str, str] | None = None) -> dict[str, Any]:
    """Routing accuracy on held-out features of every task (abstentions count as errors), per task and overall.

    ``entries`` (``{router entry: task}``, from :func:`served_entries`) restricts routing to those
    entries and reports tasks by name; default: every entry, named as in the router.
    """
    per_task, correct, total, abstained = {}, 0, 0, 0
    for task, x in features_by_task.items():
        routed = _route_as_tasks(router, x, threshold, entries)
        ok = sum(r == task for r in routed)
        unk = sum(r == UNKNOWN for r in routed)
        per_task[task] = {"n": len(routed), "accuracy": ok / len(routed) if routed else None,
                          "abstained": unk / len(routed) if routed else None,
                          "confused_with": _counts([r for r in routed if r not in (task, UNKNOWN)])}
        correct += ok
        total += len(routed)
        abstained += unk
    return {"accuracy": correct / total if total else None, "abstained": abstained / total if total else None,
            "n": total, "threshold": router.threshold_ if threshold is None else threshold, "per_task": per_task}


def _route_as_tasks(router: Router, x: Any, threshold: float | None, entries: dict[str, str] | None) -> list[str]:
    if entries is None:
        return router.route(x, threshold=threshold)[0]
    routed, _ = router.route(x, threshold=threshold, tasks=list(entries))
    return [entries.get(r, UNKNOWN) for r in routed]


def abstention_rate(router: Router, features: Any, threshold: float | None = None,
                    entries: dict[str, str] | None = None) -> float:
    """Fraction of rows routed ``unknown`` (use on out-of-distribution features)."""
    routed = _route_as_tasks(router, features, threshold, entries)
    return sum(r == UNKNOWN for r in routed) / len(routed) if routed else math.nan


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


# --------------------------------------------------------------------------- task versions

def entry_name(task: str, version: int | None) -> str:
    """The router's name for one registered version of a task: ``task@N`` (task names never hold ``@``)."""
    return task if version is None else f"{task}@{int(version)}"


def split_entry(name: str) -> tuple[str, int | None]:
    """``task@N`` -> (task, N); a plain name (routers built before versions were kept) -> (name, None)."""
    task, at, v = name.partition("@")
    return (task, int(v)) if at and v.isdigit() else (name, None)


def served_entries(router: Router, versions: dict[str, int | None]) -> dict[str, str]:
    """``{router entry: task}`` for the version of each task being served.

    A task routes with the statistics of exactly that version (``task@N``); a router built before
    versions were kept has plain ``task`` entries, used for whatever version is served. A task
    whose served version has no entry (and no plain one) is left out: its version was never
    added to the router (``adaptreg doctor`` reports it, ``adaptreg route add`` adds it).
    Without a version (adapters given as directories) the task's newest entry serves.
    """
    known = list(getattr(router, "tasks_", []) or [])
    out: dict[str, str] = {}
    for task, v in versions.items():
        if v is not None and entry_name(task, v) in known:
            out[entry_name(task, v)] = task
        elif task in known:
            out[task] = task
        elif v is None:
            mine = sorted((split_entry(e)[1] or 0, e) for e in known if split_entry(e)[0] == task)
            if mine:
                out[mine[-1][1]] = task
    return out


_ROUTING = {"ROUTER_MODEL", "ROUTER_EXPERIMENT", "ROUTER_PATH", "register_router", "router_versions", "load_router",
            "task_features", "add_task_to_registry_router"}


def __getattr__(name: str) -> Any:  # the registry glue lives in compose.routing; old imports keep working
    if name in _ROUTING:
        from . import routing

        return getattr(routing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
