"""Onboard tasks one after another and watch the accuracy matrix R grow.

After each new task: its adapter is trained (``adaptreg.onboard``), the router learns the task
from frozen-base features, and every task seen so far is predicted *without* a task id
(``Predictor.from_artifacts`` + router). Row i of R = accuracy on each task after step i.

    python examples/sequential_onboarding.py                       # 3 catalog tasks, small sizes
    python examples/sequential_onboarding.py --data a.csv,b.csv --base path/to/model
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> list[list[float | None]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="spam,bbc-news,movie-reviews", help="Comma-separated tasks (catalog names or files).")
    ap.add_argument("--base", default="minilm", help="Base model ('minilm' or a model directory).")
    ap.add_argument("--max-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", default=None, help="Where adapters go (default: a temporary directory).")
    args = ap.parse_args(argv)

    from adaptreg import LoraSettings, TrainSettings, onboard
    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor
    from adaptreg.compose.router import Router
    from adaptreg.continual import metrics
    from adaptreg.continual.benchmark import task_name
    from adaptreg.data.tasks import load_task

    specs = [s.strip() for s in args.data.split(",") if s.strip()]
    base = load_base(args.base)
    train = TrainSettings(epochs=args.epochs, max_length=args.max_length)
    router = Router(threshold=math.inf)  # closed world: every test text belongs to a known task
    out = Path(args.out or tempfile.mkdtemp(prefix="adaptreg-seq-"))
    names, data, artifacts = [], [], {}
    R: list[list[float | None]] = []
    for i, spec in enumerate(specs):
        name = task_name(spec)
        td = load_task(spec, max_per_class=args.max_per_class, seed=train.seed)
        res = onboard(name, td, base=base, lora=LoraSettings(rank=8), train=train, register=False,
                      output=str(out / name), overwrite=True, probe=True, progress=False)
        router.add_task(name, router.features(base, td.train.texts), td.train.y)
        names.append(name)
        data.append(td)
        artifacts[name] = res.artifact_dir
        predictor = Predictor.from_artifacts(base, artifacts, router)
        row: list[float | None] = []
        for j, tdj in enumerate(data):
            out_j = predictor.predict(tdj.test.texts)
            ok = [o["task"] == names[j] and o["label"] == tdj.labels[y] for o, y in zip(out_j, tdj.test.y)]
            row.append(sum(ok) / len(ok))
        R.append(row + [None] * (len(specs) - len(row)))
        print(f"after {name:<16}" + "".join(f"{v * 100:8.1f}" if v is not None else "       -" for v in R[-1]))
    print(f"ACC {metrics.average_accuracy(R) * 100:.2f}  BWT "
          + ("-" if metrics.backward_transfer(R) is None else f"{metrics.backward_transfer(R) * 100:.2f}")
          + f"  (adapters in {out})")
    return R


if __name__ == "__main__":
    main()
