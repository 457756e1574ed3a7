"""Compare adapter versions and continual strategies in MLflow.

1. Two versions of one task (rank 4 vs rank 8) go into the registry; their metrics are read
   back through ``Registry.compare``.
2. A small continual benchmark (``adaptreg``, ``seq-lora``, ``probe``) is logged as one parent
   run with a child run per strategy; the comparison is then read back *from MLflow*.

    python examples/mlflow_comparison.py                 # catalog tasks, small sizes
    python examples/mlflow_comparison.py --data a.csv,b.csv --base path/to/model --registry /tmp/reg
    mlflow ui --backend-store-uri sqlite:///example-registry/mlflow.db     # then browse
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="spam,bbc-news")
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--registry", default="example-registry")
    ap.add_argument("--max-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", default="example-report")
    args = ap.parse_args(argv)

    from mlflow import MlflowClient

    from adaptreg import LoraSettings, Registry, TrainSettings, onboard
    from adaptreg.base import load_base
    from adaptreg.continual.benchmark import run_continual, task_name
    from adaptreg.continual.report import tracking_location

    specs = [s.strip() for s in args.data.split(",") if s.strip()]
    base = load_base(args.base)
    train = TrainSettings(epochs=args.epochs, max_length=args.max_length)
    reg = Registry(args.registry)
    first = task_name(specs[0])
    for rank in (4, 8):
        onboard(first, specs[0], base=base, lora=LoraSettings(rank=rank, alpha=2 * rank), train=train, registry=reg,
                max_per_class=args.max_per_class, progress=False)
    print(reg.compare([first]))

    result = run_continual(specs, strategies=["adaptreg", "seq-lora", "probe"], base=base, train=train,
                           max_per_class=args.max_per_class, out=args.out, registry=args.registry)
    uri, _ = tracking_location(args.registry)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("adaptreg-continual")
    parent = result.extra["mlflow_run_id"]
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    rows = []
    for r in sorted(runs, key=lambda r: r.data.tags["strategy"]):
        m = r.data.metrics
        rows.append({"strategy": r.data.tags["strategy"], "acc": m.get("acc"), "bwt": m.get("bwt"),
                     "forgetting": m.get("forgetting")})
        print(f"{rows[-1]['strategy']:<10} ACC {m.get('acc', float('nan')):.4f}  BWT {m.get('bwt', float('nan')):.4f}  "
              f"forgetting {m.get('forgetting', float('nan')):.4f}")
    return rows


if __name__ == "__main__":
    main()
