"""Forward transfer of ``onboard --init-from``: the same new task started from an old adapter vs fresh.

usage: python benchmarks/bench_init_from.py --registry DIR --source TASK --target DATA
                                            [--per-class 30,100] [--seeds 0,1,2] [--epochs 3]
                                            [--max-length 64] [--json out.json]

For each size and seed, onboards DATA (catalog name or file, capped at N examples per class) twice
with identical splits and settings: from a fresh LoRA initialisation, and from the registered
adapter SOURCE (``init_from``). Nothing is registered. Reports test accuracy of both, the transfer
(init-from minus fresh, in points) and the validation accuracy after the first epoch (how much of
a head start the old adapter gives), mean and standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

from _report import emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", required=True)
    ap.add_argument("--source", required=True, help="registered task (TASK or TASK@VERSION) to start from")
    ap.add_argument("--target", required=True, help="data of the new task (catalog name or file)")
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--per-class", default="30,100")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from adaptreg.base import load_base
    from adaptreg.config import TrainSettings
    from adaptreg.registry import Registry
    from adaptreg.train import onboard

    reg = Registry(args.registry)
    base = load_base(args.base)
    out = {"source": args.source, "target": args.target, "epochs": args.epochs, "max_length": args.max_length,
           "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory(prefix="adaptreg-initfrom-") as tmp:
        for n in [int(v) for v in args.per_class.split(",")]:
            for seed in [int(v) for v in args.seeds.split(",")]:
                for start in ("fresh", "init_from"):
                    t0 = time.perf_counter()
                    res = onboard("target", args.target, base=base, max_per_class=n, registry=reg, register=False,
                                  output=f"{tmp}/{n}-{seed}-{start}", overwrite=True, probe=False, route=False,
                                  progress=False, train=TrainSettings(epochs=args.epochs, max_length=args.max_length,
                                                                      seed=seed),
                                  init_from=args.source if start == "init_from" else None)
                    hist = res.manifest["history"]
                    run = {"per_class": n, "seed": seed, "start": start,
                           "test_accuracy": res.metrics["test_accuracy"],
                           "val_accuracy_epoch1": hist[0]["val_accuracy"], "n_train": res.manifest["data"]["n_train"],
                           "n_test": res.manifest["data"]["n_test"], "seconds": time.perf_counter() - t0}
                    out["runs"].append(run)
                    print(json.dumps(run), file=sys.stderr)
            rows = [r for r in out["runs"] if r["per_class"] == n]

            def stat(start: str, key: str) -> dict[str, float]:
                vals = [100 * r[key] for r in rows if r["start"] == start]
                return {"mean": statistics.mean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}

            gains = [100 * (a["test_accuracy"] - b["test_accuracy"])
                     for a, b in zip([r for r in rows if r["start"] == "init_from"], [r for r in rows if r["start"] == "fresh"])]
            out["summary"][str(n)] = {
                "fresh_test": stat("fresh", "test_accuracy"), "init_from_test": stat("init_from", "test_accuracy"),
                "transfer_points": {"mean": statistics.mean(gains), "per_seed": gains},
                "fresh_val_epoch1": stat("fresh", "val_accuracy_epoch1"),
                "init_from_val_epoch1": stat("init_from", "val_accuracy_epoch1")}
    emit(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
