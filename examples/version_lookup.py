"""Register two versions of a task, promote one, look it up and load it by alias.

    python examples/version_lookup.py                      # catalog 'spam', small sizes, ./example-registry
    python examples/version_lookup.py --data toy.csv --base path/to/model --registry /tmp/reg
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="spam")
    ap.add_argument("--task", default="mail")
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--registry", default="example-registry", help="Registry directory (SQLite + artifacts).")
    ap.add_argument("--max-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args(argv)

    from adaptreg import LoraSettings, Registry, TrainSettings, onboard
    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor

    reg = Registry(args.registry)
    base = load_base(args.base)
    versions = []
    for rank in (4, 8):  # two versions of the same task: rank 4, then rank 8
        res = onboard(args.task, args.data, base=base, lora=LoraSettings(rank=rank, alpha=2 * rank),
                      train=TrainSettings(epochs=args.epochs, max_length=args.max_length), registry=reg,
                      max_per_class=args.max_per_class, progress=False)
        versions.append(res.version)
        print(f"registered {args.task} v{res.version} (rank {rank}): "
              f"test accuracy {res.metrics['test_accuracy']:.4f}")
    best = reg.lookup(args.task, best="test_accuracy")
    reg.promote(args.task, best["version"], "production")
    found = reg.lookup(args.task, alias="production")
    print(f"production -> v{found['version']} at {found['path']}")
    loaded = reg.load(args.task, alias="production", base=base)  # sha256 + base fingerprint checked
    predictor = Predictor.from_artifacts(base, {args.task: loaded["path"]})
    print(predictor.predict(["free money, click now!", "see you at the meeting tomorrow"], task=args.task))
    return {"versions": versions, "production": found["version"]}


if __name__ == "__main__":
    main()
