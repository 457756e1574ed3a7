"""Routing at scale: accuracy and time per row as the number of routed tasks grows.

usage: python benchmarks/bench_routing_scale.py [--counts 4,8,16,32] [--max-per-class 50] [--json out.json]

Tasks are class-incremental chunks of real intent datasets from the catalog (one domain per
dataset, the hardest case for a router): ``clinc150:I/16`` and ``banking77:I/16`` interleaved,
so K tasks hold about 150·K/32 + 77·K/32 intents. For each K the default :class:`Router` is
built task by task from training rows (at most ``--max-per-class`` per intent), then routes every
test row of the K tasks. Abstentions count as errors. Time per row is split into the frozen
trunk pass that prediction runs anyway (measured once: it does not depend on K) and the
router's own work (``Router.route`` on the features), so the ratio at 32 vs 4 tasks is the
router's cost. Also: clinc150 as 10 tasks of 15 intents, routing accuracy after the tenth task.
Validation is not needed (nothing is tuned here); test rows are only routed.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="4,8,16,32")
    ap.add_argument("--max-per-class", type=int, default=50, help="training rows per intent for the router")
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats of the routing step (minimum kept)")
    ap.add_argument("--surface", type=float, default=None, help="weight of the router's text-surface block "
                    "(default: the Router default; 0 = layer features only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np

    from adaptreg.base import load_base
    from adaptreg.compose.router import SURFACE_DIMS, UNKNOWN, Router
    from adaptreg.data import catalog
    from adaptreg.data.tasks import load_task

    counts = [int(c) for c in args.counts.split(",")]
    chunks = max(counts) // 2
    specs = [s for i in range(chunks) for s in (f"clinc150:{i}/{chunks}", f"banking77:{i}/{chunks}")]
    ten = [f"clinc150:{i}/10" for i in range(10)]
    for name in ("clinc150", "banking77"):
        catalog.fetch(name)
    tds = {s: load_task(s, max_per_class=args.max_per_class) for s in specs + ten}
    lb = load_base(args.base)
    kw = {} if args.surface is None else {"surface": args.surface}
    probe = Router(surface=1.0)  # features with the surface block (any weight > 0 computes it); weight 0 drops it
    texts = sorted({t for td in tds.values() for part in (td.train, td.test) for t in part.texts})
    t0 = time.perf_counter()
    feats = probe.features(lb, texts)
    trunk_s_per_row = (time.perf_counter() - t0) / len(texts)
    index = {t: i for i, t in enumerate(texts)}

    keep = slice(0, feats.shape[1] - SURFACE_DIMS) if args.surface == 0 else slice(None)

    def x(part) -> np.ndarray:
        return feats[[index[t] for t in part.texts]][:, keep]

    def evaluate(names: list[str]) -> dict:
        router = Router(**kw)
        t0 = time.perf_counter()
        for s in names:
            router.add_task(s, x(tds[s].train), tds[s].train.y)
        fit_s = time.perf_counter() - t0
        rows = np.concatenate([x(tds[s].test) for s in names])
        truth = [s for s in names for _ in tds[s].test.texts]
        routed, _ = router.route(rows)
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            router.route(rows)
            best = min(best, time.perf_counter() - t0)
        return {"tasks": len(names), "intents": int(sum(len(tds[s].labels) for s in names)), "test_rows": len(truth),
                "accuracy": float(np.mean([r == t for r, t in zip(routed, truth)])),
                "unknown": float(np.mean([r == UNKNOWN for r in routed])),
                "accuracy_never_abstaining": float(np.mean([r == t for r, t in zip(router.route(rows, threshold=np.inf)[0], truth)])),
                "router_ms_per_row": 1000.0 * best / len(truth), "fit_s": fit_s}

    scale = [evaluate(specs[:k]) for k in counts]
    base_ms = scale[0]["router_ms_per_row"]
    for r in scale:
        r["router_time_vs_first"] = r["router_ms_per_row"] / base_ms
        r["total_ms_per_row"] = r["router_ms_per_row"] + 1000.0 * trunk_s_per_row
    clinc10 = evaluate(ten)
    out = {"surface": Router(**kw).surface, "counts": counts, "max_per_class": args.max_per_class, "trunk_ms_per_row": 1000.0 * trunk_s_per_row,
           "scale": scale, "clinc150_10_tasks": clinc10,
           "targets": {"clinc150_10_tasks_accuracy>=0.90": clinc10["accuracy"] >= 0.90,
                       "router_time_32_vs_4<=2": scale[-1]["router_time_vs_first"] <= 2.0 if counts[0] == 4 else None,
                       "total_time_32_vs_4<=2": scale[-1]["total_ms_per_row"] / scale[0]["total_ms_per_row"] <= 2.0}}
    print(f"trunk pass {out['trunk_ms_per_row']:.2f} ms/row (features for routing come from it; independent of K)")
    print("tasks  intents  test rows  accuracy  unknown  acc(no abstain)  router ms/row  x vs first  total ms/row")
    for r in scale:
        print(f"{r['tasks']:>5}  {r['intents']:>7}  {r['test_rows']:>9}  {r['accuracy']:.4f}    {r['unknown']:.4f}   "
              f"{r['accuracy_never_abstaining']:.4f}           {r['router_ms_per_row']:.4f}        "
              f"{r['router_time_vs_first']:.2f}      {r['total_ms_per_row']:.3f}")
    print(f"clinc150 as 10 tasks of 15 intents: accuracy {clinc10['accuracy']:.4f}, unknown {clinc10['unknown']:.4f}, "
          f"never abstaining {clinc10['accuracy_never_abstaining']:.4f}")
    for k, v in out["targets"].items():
        print(f"{'PASS' if v else 'MISS'}  {k}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
