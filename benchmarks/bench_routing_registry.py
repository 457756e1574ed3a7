"""Predict without task ids on a shuffled mix of every registered task's test split.

usage: python benchmarks/bench_routing_registry.py --registry DIR [--base minilm] [--threshold X] [--json out.json]

For the tasks the registry's latest router routes (their production alias, else latest version):
rebuilds each task's test split from its manifest (data source + seed + columns, fingerprint-checked),
shuffles all rows together with a fixed seed, and predicts them (1) routed, with no task id, and
(2) with the true task id per row. Prints routing accuracy, abstention, label accuracy of both and
the gap, per task and overall. Issue 5 targets: routing >= 0.97, gap <= 1 point.

Also, from the validation splits only (never test): the abstention trade-off at a few thresholds,
in-domain rows refused vs out-of-domain texts refused (digit strings, random characters, German:
``bench_predict.ood_sets(100)``), the table docs/composition.md and the README quote.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from _report import emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", required=True)
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--sweep", default="0.8,0.9,1.0,1.1,1.2,1.5", help="thresholds for the validation trade-off")
    args = ap.parse_args()

    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor
    from adaptreg.data.tasks import load_task_from_manifest
    from adaptreg.registry import Registry

    reg = Registry(args.registry)
    base = load_base(args.base)
    from adaptreg.compose.router import load_router

    router = load_router(reg)
    if router is None:
        sys.exit("error: the registry has no router; onboard tasks or run `adaptreg route add TASK...`")
    pred = Predictor(reg, base=base, tasks=router.tasks_, router=router, threshold=args.threshold)
    rows, val = [], {}
    for task in pred.tasks:
        rec = reg.lookup(task)
        manifest = json.loads(open(f"{rec['path']}/manifest.json", encoding="utf-8").read())
        td = load_task_from_manifest(manifest)
        rows += [(t, task, td.labels[y]) for t, y in zip(td.test.texts, td.test.y)]
        val[task] = router.features(base, td.val.texts)
    random.Random(args.seed).shuffle(rows)
    texts = [r[0] for r in rows]
    t0 = time.perf_counter()
    routed = pred.predict(texts)
    t1 = time.perf_counter()
    given = pred.predict(texts, task=[r[1] for r in rows])
    t2 = time.perf_counter()

    def summary(sel: list[int]) -> dict:
        n = len(sel)
        return {
            "rows": n,
            "routing_accuracy": sum(routed[i]["task"] == rows[i][1] for i in sel) / n,
            "abstained": sum(routed[i]["task"] == "unknown" for i in sel) / n,
            "label_accuracy_routed": sum(routed[i]["task"] == rows[i][1] and routed[i]["label"] == rows[i][2] for i in sel) / n,
            "label_accuracy_task_given": sum(given[i]["label"] == rows[i][2] for i in sel) / n,
        }

    out = {"overall": summary(list(range(len(rows)))),
           "per_task": {t: summary([i for i, r in enumerate(rows) if r[1] == t]) for t in pred.tasks},
           "threshold": router.threshold_ if args.threshold is None else args.threshold,
           "routed_rows_per_s": len(rows) / (t1 - t0), "task_given_rows_per_s": len(rows) / (t2 - t1)}
    from bench_predict import ood_sets

    from adaptreg.compose.router import abstention_rate, routing_report

    ood = {k: router.features(base, v) for k, v in ood_sets(100).items()}
    out["validation_tradeoff"] = [
        {"threshold": thr, "val_routing": (rep := routing_report(router, val, thr))["accuracy"],
         "val_refused": rep["abstained"], **{f"ood_{k}": abstention_rate(router, f, thr) for k, f in ood.items()}}
        for thr in [float(v) for v in args.sweep.split(",")]]
    o = out["overall"]
    o["gap_points"] = 100 * (o["label_accuracy_task_given"] - o["label_accuracy_routed"])
    emit(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
