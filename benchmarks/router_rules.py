"""Which routing rule on held-out *training* rows of the 8-task stream: nearest class mean (LDA) vs
the calibrated route score vs class means split into sub-clusters (k-means inside each label, as
mixture discriminant analysis does) vs weights and versions of the text-surface block, and which
tasks the errors go to. No test row is read.

usage: python benchmarks/router_rules.py [--clusters 2,4,8] [--surface 0,0.5,1,2,4]
       [--own 0.05:0,0.05:0.5,...] [--temperature 0,4,8,16] [--surface-version 1,2 [--surface-weights 4,6]]
       [--seed 0 | --seeds 0,1,2,3] [--json out.json]

The tasks and caps of the 8-task continual stream (docs/benchmarks.md): each task's labelled rows
(train + validation, 100 per class, at most 1,500 per task) are split in two halves by a fixed
permutation (``--seed``); a router fitted on one half of every task routes the other half, and the
other way round.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from adaptreg.base import load_base
from adaptreg.compose.router import Router
from adaptreg.continual.benchmark import load_text_tasks

TASKS = ["bbc-news", "spam", "movie-reviews", "tweet-sentiment", "yahoo-answers", "clinc150", "banking77",
         "20-newsgroups"]


def subclusters(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Labels refined into up to ``k`` k-means clusters each (labels with < 4k rows stay whole)."""
    if k <= 1:
        return y
    from sklearn.cluster import KMeans

    out = np.asarray(y).astype(np.int64) * 1000
    for c in np.unique(y):
        sel = np.flatnonzero(y == c)
        if len(sel) >= 4 * k:
            out[sel] += KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(x[sel])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--tasks", default=",".join(TASKS), help="Comma-separated catalog tasks (default: the 8-task stream).")
    ap.add_argument("--clusters", default="", help="Also try k sub-clusters per label, e.g. 2,4,8.")
    ap.add_argument("--surface", default="", help="Also try these weights of the text-surface block (0 = none), "
                    "nearest class mean; the other rules use the default weight.")
    ap.add_argument("--own", default="", help="Also try regularised discriminant analysis: comma-separated "
                    "OWN_COVARIANCE:LOG_DET pairs (Router's own_covariance and log_det), default surface weight.")
    ap.add_argument("--temperature", default="", help="Also try these class temperatures (Router's "
                    "class_temperature; 0 = nearest class mean) at the default own covariance and log-det.")
    ap.add_argument("--surface-version", default="", help="Also try these versions of the surface block "
                    "(Router's surface_version), the router's defaults otherwise.")
    ap.add_argument("--surface-weights", default="", help="With --surface-version: try each version at these "
                    "surface weights too (default: the default weight only).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the split of each task's rows in two halves.")
    ap.add_argument("--seeds", default="", help="Several seeds, e.g. 0,1,2,3: each rule's figures are summed over "
                    "their splits (overrides --seed).")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()] or [args.seed]
    lb = load_base("minilm")
    tasks = load_text_tasks([t.strip() for t in args.tasks.split(",") if t.strip()], 100, 0, None, 1500)
    r0 = Router()  # the default rule's parameters (surface weight)
    layers_only = Router(surface=0)  # each rule adds its own surface block to these layer features
    X, Y, T = {}, {}, {}
    for name, td in tasks:
        texts = list(td.train.texts) + list(td.val.texts)
        T[name] = texts
        X[name] = layers_only.features(lb, texts)
        Y[name] = np.asarray(list(td.train.y) + list(td.val.y))
        print(f"features {name}: {len(texts)}", file=sys.stderr)
    lda = lambda r, x: np.asarray(r.task_distances(x)).argmin(1)  # noqa: E731
    routed_as = lambda r, x: [r.tasks_.index(t) for t in r.route(x)[0]]  # noqa: E731  (the router's own rule)
    shared = {"own_covariance": 0.0, "log_det": 0.0, "class_temperature": 0.0}
    rules = {"lda (nearest class mean)": (lda, 1, r0.surface, shared),
             "route score (distance / calibrated quantile)":
                 (lambda r, x: np.asarray(r.decision_scores(x)).argmin(1), 1, r0.surface, shared)}
    for k in [int(v) for v in args.clusters.split(",") if v.strip()]:
        rules[f"lda over {k} sub-clusters per label"] = (lda, k, r0.surface, shared)
    for w in [float(v) for v in args.surface.split(",") if v.strip()]:
        rules[f"lda, surface weight {w:g}"] = (lda, 1, w, shared)
    for pair in [v for v in args.own.split(",") if v.strip()]:
        a, ld = (float(v) for v in pair.split(":"))
        rules[f"rda, own covariance {a:g}, log-det {ld:g}"] = (routed_as, 1, r0.surface,
                                                               {"own_covariance": a, "log_det": ld, "class_temperature": 0.0})
    for t in [float(v) for v in args.temperature.split(",") if v.strip()]:
        rules[f"rda (defaults), class temperature {t:g}"] = (routed_as, 1, r0.surface, {"class_temperature": t})
    weights = [float(v) for v in args.surface_weights.split(",") if v.strip()] or [r0.surface]
    for v in [int(v) for v in args.surface_version.split(",") if v.strip()]:
        for w in weights:
            rules[f"rda (defaults), surface version {v}, weight {w:g}"] = (routed_as, 1, w, {"surface_version": v})
    out = {}
    for rule, (pick, k, w, cov) in rules.items():
        hits, conf = {n: 0 for n in X}, {n: {} for n in X}
        r0v = Router(surface=w, **cov)
        # the layer features with this rule's surface block (none at weight 0)
        xs = {n: r0v.with_surface(X[n], T[n]) for n in X}
        for seed in seeds:
            rng = np.random.default_rng(seed)
            halves = {n: rng.permutation(len(Y[n])) % 2 for n in X}
            for h in (0, 1):
                r = Router(threshold=float("inf"), surface=w, **cov)
                for n in X:
                    m = halves[n] == h
                    r.add_task(n, xs[n][m], subclusters(r._prep(xs[n][m]), Y[n][m], k))
                for n in X:
                    m = halves[n] != h
                    routed = [r.tasks_[i] for i in pick(r, xs[n][m])]
                    hits[n] += sum(t == n for t in routed)
                    for t in routed:
                        if t != n:
                            conf[n][t] = conf[n].get(t, 0) + 1
        per = {n: hits[n] / (len(Y[n]) * len(seeds)) for n in X}
        out[rule] = {"mean": float(np.mean(list(per.values()))), "seeds": seeds,
                     "all_rows": sum(hits.values()) / (sum(len(y) for y in Y.values()) * len(seeds)),
                     "per_task": per, "errors_to": conf}
        print(f"{rule}: mean over tasks {out[rule]['mean']:.4f}, all rows {out[rule]['all_rows']:.4f}")
        for n in X:
            top = sorted(conf[n].items(), key=lambda kv: -kv[1])[:3]
            print(f"  {n:16s} {per[n]:.4f}  errors to {top}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
