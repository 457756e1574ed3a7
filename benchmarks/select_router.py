"""How the router's defaults were chosen: layers and threshold, on validation data only.

usage: python benchmarks/select_router.py --registry DIR [--base minilm] [--extra 600] [--json out.json]
       python benchmarks/select_router.py --tasks bbc-news,spam,movie-reviews,tweet-sentiment --cap 300
              [--max-length 128 --truncation head+tail] [--layer-sets trunk]

For the tasks the registry's latest router routes, with data rebuilt from each manifest (or the
catalog tasks ``--tasks`` capped at ``--cap`` per class, loaded as onboarding loads them):
  * held-out rows that are never test rows: each task's validation split; "extra" rows, which are
    catalog *training* rows the task never used (its ``NAME@N`` cap left them out; none for a task
    trained on its whole catalog split); and 5-fold cross-fitting of each task's training split;
  * routing errors (no abstention) for several sets of frozen-base layers;
  * for the default layers, the abstention trade-off: in-domain rows refused on the validation
    and extra rows vs out-of-domain texts refused (``bench_predict.ood_sets``) per threshold.
Test splits are never read.
"""

from __future__ import annotations

import argparse
import json
import random
import sys

LAYER_SETS = ((-1,), (-2,), (-3,), (-4,), (-2, -1), (-4, -2), (-4, -3, -2), (-6, -5, -4, -3, -2, -1))
# Hidden states inside the default trunk (MiniLM, 2 adapted layers: hidden states 0..4 = -7..-3), so
# that routing reads the trunk pass prediction runs anyway; the two-layer sets above for reference.
TRUNK_SETS = ((-3,), (-4,), (-4, -3), (-5, -3), (-5, -4, -3), (-6, -5, -4, -3), (-4, -2), (-2,))

from _report import emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", default=None)
    ap.add_argument("--tasks", default=None, help="catalog tasks instead of a registry's router tasks")
    ap.add_argument("--cap", type=int, default=300, help="with --tasks: examples per class, as `onboard --max-per-class`")
    ap.add_argument("--max-length", type=int, default=None, help="routing tokens (default: the router default)")
    ap.add_argument("--truncation", default=None, help="head or head+tail (default: the router default)")
    ap.add_argument("--layer-sets", default="all", choices=("all", "trunk", "default"),
                    help="which layer sets to compare (default: only the router's default; then only the threshold table)")
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--extra", type=int, default=600, help="extra held-out rows per task (catalog train rows unused)")
    ap.add_argument("--thresholds", default="0.8,0.9,1.0,1.1,1.2,1.5")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np

    from bench_predict import ood_sets

    from adaptreg.base import load_base
    from adaptreg.compose.router import UNKNOWN, Router, load_router
    from adaptreg.data import catalog
    from adaptreg.data.tasks import _norm, load_task_from_manifest
    from adaptreg.errors import CatalogError
    from adaptreg.registry import Registry

    from adaptreg.data.tasks import load_task

    if (args.registry is None) == (args.tasks is None):
        ap.error("give --registry DIR or --tasks T1,T2,..")
    base = load_base(args.base)
    if args.tasks:
        tasks = args.tasks.split(",")
        task_data = {t: (load_task(t, max_per_class=args.cap), t) for t in tasks}
    else:
        reg = Registry(args.registry)
        tasks = load_router(reg).tasks_
        task_data = {}
        for t in tasks:
            manifest = json.loads(open(f"{reg.lookup(t)['path']}/manifest.json", encoding="utf-8").read())
            task_data[t] = (load_task_from_manifest(manifest), str(manifest["data"]["source"]).split("@")[0])
    depth = int(base.model.config.num_hidden_layers) + 1
    knobs = {k: v for k, v in (("max_length", args.max_length), ("truncation", args.truncation)) if v is not None}
    knobs["surface"] = 0  # layers are chosen on the layer features alone (the surface block: router_rules.py)
    every = Router(layers=tuple(range(-depth, 0)), **knobs)  # all hidden states at once; blocks sliced below
    feats: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    for t in tasks:
        td, source = task_data[t]
        used = {_norm(x) for part in (td.train, td.val, td.test) for x in part.texts}
        try:
            extra = [r["text"] for r in catalog.load(source)[0] if _norm(r["text"]) not in used]
        except CatalogError:  # trained on a file, not a catalog dataset: no extra rows
            extra = []
        random.Random(1).shuffle(extra)
        feats[t] = {"train": every.features(base, td.train.texts), "val": every.features(base, td.val.texts)}
        if extra[: args.extra]:
            feats[t]["extra"] = every.features(base, extra[: args.extra])
        labels[t] = np.asarray(td.train.y)
        print(f"{t}: train {len(td.train.texts)} val {len(td.val.texts)} extra {len(extra[:args.extra])}", file=sys.stderr)
    ood_all = {k: every.features(base, v) for k, v in ood_sets(100).items()}
    width = feats[tasks[0]]["train"].shape[1] // depth

    def pick(x: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([x[:, (depth + i) * width:(depth + i + 1) * width] for i in layers], 1)

    def router_for(layers, drop=None, keep=None):
        r = Router(layers=layers, **knobs)
        for t in tasks:
            x, y = pick(feats[t]["train"], layers), labels[t]
            if t == drop:
                x, y = x[keep], y[keep]
            r.add_task(t, x, y)
        return r

    selection = []
    sets = {"all": LAYER_SETS, "trunk": TRUNK_SETS, "default": (Router().feature_layers,)}[args.layer_sets]
    for layers in sets:
        if -min(layers) > depth:
            continue
        r = router_for(layers)
        row = {"layers": list(layers)}
        for split in ("val", "extra"):
            n = err = 0
            for t in tasks:
                if split in feats[t]:
                    routed = r.route(pick(feats[t][split], layers), threshold=float("inf"))[0]
                    err += sum(x != t for x in routed)
                    n += len(routed)
            row[f"{split}_errors"], row[f"{split}_rows"] = err, n
        err = n = 0
        for t in tasks:
            fold = np.random.default_rng(0).permutation(len(labels[t])) % 5
            for f in range(5):
                rf = router_for(layers, drop=t, keep=fold != f)
                routed = rf.route(pick(feats[t]["train"][fold == f], layers), threshold=float("inf"))[0]
                err += sum(x != t for x in routed)
                n += len(routed)
        row["cv_errors"], row["cv_rows"] = err, n
        row["error_rate_all"] = (row["val_errors"] + row["extra_errors"] + err) / (row["val_rows"] + row["extra_rows"] + n)
        selection.append(row)
        print(json.dumps(row), file=sys.stderr)

    default = Router(**knobs)
    r = router_for(default.feature_layers)
    tradeoff = []
    for thr in [float(v) for v in args.thresholds.split(",")]:
        row = {"threshold": thr}
        for split in ("val", "extra"):
            routed = [x for t in tasks if split in feats[t] for x in r.route(pick(feats[t][split], default.feature_layers), thr)[0]]
            row[f"{split}_refused"] = sum(x == UNKNOWN for x in routed) / len(routed)
        for k, x in ood_all.items():
            row[f"ood_{k}"] = sum(v == UNKNOWN for v in r.route(pick(x, default.feature_layers), thr)[0]) / len(x)
        tradeoff.append(row)
    out = {"tasks": tasks, "routing": {"max_length": every.max_length, "truncation": every.truncation},
           "layer_selection": selection, "default_layers": list(default.feature_layers),
           "threshold_tradeoff": tradeoff}
    emit(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
