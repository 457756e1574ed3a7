"""Out-of-fold learning curves of the adapter against the probe, on training rows only.

usage: python benchmarks/cv_curves.py --task spam [--per-class 300] [--adapted-layers 2,0]
                                      [--folds 3] [--json out.json]

The onboarding decision's own cross-validation (adaptreg.train.cross_validated_predictions)
stops each fold adapter at the epoch the main run kept. This script runs the same folds over the
capped task's train + val rows (StratifiedKFold, seed 0; fold k trains with seed 1 + k, as there)
for the whole planned schedule instead, and scores each fold's held-out rows after every epoch.
So every epoch budget, and every value of ``--adapted-layers`` (0 = every layer), is compared with
the probe (C chosen on validation, refitted per fold) on several hundred held-out rows where the
validation split has a few dozen. Every other setting is the onboarding default. Test splits are
never read.

Per epoch: out-of-fold accuracy and log-loss of the adapter, rows only it gets right (b) and rows
only the probe gets right (c). Also the training seconds of each candidate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def curves(task: str, per_class: int, layers: int, folds: int, lb: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from sklearn.model_selection import StratifiedKFold

    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.data.tasks import load_task
    from adaptreg.train import (TaskModel, _load_trainable_state, _trainable_state, auto_epochs, build_peft_model,
                                cache_logits, fit, fold_data, frozen_features, linear_probe, log_loss, probe_logits,
                                probe_pipeline, resolve_length, seed_everything)
    from adaptreg.trunk import TrunkCache, split_point

    ts = TrainSettings(adapted_layers=layers)
    td = load_task(task, max_per_class=per_class, seed=ts.seed)
    length = resolve_length(lb, td, ts)
    split = split_point(lb.model, layers)
    caches = {s: TrunkCache(lb.model, lb.tokenizer, getattr(td, s).texts, length, split, ts.truncation,
                            ts.eval_batch_size, int(ts.cache_ram_mb) * 1024 ** 2) for s in ("train", "val")}
    peft_model = None
    try:
        feats = {s: frozen_features(lb.model, caches[s], ts.eval_batch_size) for s in caches}
        c_value = linear_probe(feats["train"], td.train.y, feats["val"], td.val.y, ts.seed).chosen_C_
        seed_everything(ts.seed)
        peft_model = build_peft_model(lb.model, lb.model_type, LoraSettings(), split=split)
        model = TaskModel(peft_model, torch.nn.Linear(lb.hidden_size, td.n_labels), split, base_dropout=ts.base_dropout)
        init = _trainable_state(model)
        rows = [(caches["train"], i) for i in range(len(td.train))] + [(caches["val"], i) for i in range(len(td.val))]
        y = np.asarray(list(td.train.y) + list(td.val.y))
        x = np.concatenate([feats["train"], feats["val"]])
        epochs = auto_epochs(len(td.train), ts.batch_size, ts)
        a = np.zeros((epochs, len(y), td.n_labels))
        p = np.zeros((len(y), td.n_labels))
        t0 = time.perf_counter()
        for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=ts.seed).split(x, y)):
            p[te] = probe_logits(probe_pipeline(c_value, ts.seed).fit(x[tr], y[tr]), x[te])
            _load_trainable_state(model, init)
            fold, views = fold_data(td.labels, rows, y, tr, te)

            def record(epoch: int, m: Any, _rec: Any, te: Any = te, views: Any = views) -> None:
                a[epoch - 1, te] = cache_logits(m, views["val"], ts.eval_batch_size)

            fit(model, None, fold, TrainSettings(**{**ts.to_dict(), "epochs": epochs, "patience": 0, "seed": ts.seed + 1 + k}),
                progress=False, caches=views, keep_best=False, on_epoch=record)
        seconds = time.perf_counter() - t0
    finally:
        for c in caches.values():
            c.close()
        if peft_model is not None:
            peft_model.unload()
        for prm in lb.model.parameters():
            prm.requires_grad_(False)
    p_ok = p.argmax(1) == y
    per_epoch = []
    for e in range(epochs):
        ok = a[e].argmax(1) == y
        per_epoch.append({"epoch": e + 1, "accuracy": round(float(ok.mean()), 4), "loss": round(log_loss(a[e], y.tolist()), 4),
                          "adapter_only": int((ok & ~p_ok).sum()), "probe_only": int((~ok & p_ok).sum())})
    best = max(per_epoch, key=lambda r: (r["accuracy"], -r["loss"]))
    log(f"{task} adapted_layers={layers}: probe {p_ok.mean():.4f}; adapter by epoch "
        + " ".join(f"{r['accuracy']:.4f}" for r in per_epoch) + f" ({seconds:.0f} s)")
    return {"adapted_layers": layers, "max_length": length, "epochs": epochs, "rows": len(y),
            "probe_accuracy": round(float(p_ok.mean()), 4), "probe_loss": round(log_loss(p, y.tolist()), 4),
            "probe_C": c_value, "per_epoch": per_epoch, "best_epoch": best["epoch"],
            "fold_training_seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, help="a catalog task name")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--adapted-layers", default="2", help="comma-separated candidates (0 = every layer)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    from adaptreg.base import load_base

    lb = load_base("minilm")
    results = [curves(args.task, args.per_class, int(n), args.folds, lb) for n in args.adapted_layers.split(",")]
    emit({"benchmark": "out-of-fold curves over train + val (no test row read)",
          "command": " ".join(["python", "benchmarks/cv_curves.py"] + sys.argv[1:]),
          "task": args.task, "per_class": args.per_class, "folds": args.folds, "results": results}, args.json)


if __name__ == "__main__":
    main()
