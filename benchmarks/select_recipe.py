"""How the onboarding recipe's defaults were chosen: on validation data only, never a test split.

usage: python benchmarks/select_recipe.py [--tasks bbc-news,spam,movie-reviews,tweet-sentiment]
       [--cap 150] [--extra 100] [--epochs 10] [--configs A,B,C,E] [--json out.json]

Per catalog task capped at ``--cap`` examples per class (the continual benchmark's setting):
  * held-out rows that are never test rows: the task's own validation split, and "extra" rows,
    catalog *training* rows that the cap left out (``--extra`` per class);
  * the frozen-base probe on both, and for the truncation choice the probe at 128 tokens with
    head / head+tail truncation and at 256 tokens (a cheap proxy: frozen features, no training);
  * for each recipe candidate (adapted layers, learning rate, head init), one run of
    ``--epochs`` epochs at a constant learning rate, with validation and extra accuracy and loss
    after every epoch, so every epoch budget and every checkpoint rule is read off one curve.
Test splits are never read. The summary is printed as JSON (and written to ``--json``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from _report import emit

CONFIGS = {
    "A": {"adapted_layers": 2, "lr": 1e-3, "head_init": "random"},  # schedule: constant unless given
    "B": {"adapted_layers": 2, "lr": 2e-3, "head_init": "random"},
    "C": {"adapted_layers": 3, "lr": 1e-3, "head_init": "random"},
    "D": {"adapted_layers": 6, "lr": 1e-3, "head_init": "random"},
    "E": {"adapted_layers": 2, "lr": 1e-3, "head_init": "probe"},
    "F": {"adapted_layers": 2, "lr": 1e-3, "head_init": "random", "schedule": "cosine"},
    "G": {"adapted_layers": 2, "lr": 2e-3, "head_init": "random", "schedule": "cosine"},
    "H": {"adapted_layers": 2, "lr": 1e-3, "head_init": "random", "schedule": "cosine", "base_dropout": False},
}


def extra_rows(name: str, td, per_class: int) -> tuple[list[str], list[int]]:
    """Catalog training rows the capped task never saw (``per_class`` per label, seeded shuffle)."""
    from adaptreg.data import catalog
    from adaptreg.data.tasks import _norm

    used = {_norm(x) for part in (td.train, td.val, td.test) for x in part.texts}
    rows = [r for r in catalog.load(name)[0] if _norm(r["text"]) not in used]
    random.Random(1).shuffle(rows)
    index = {lab: i for i, lab in enumerate(td.labels)}
    counts: dict[str, int] = {}
    texts, ys = [], []
    for r in rows:
        if r["label"] in index and counts.get(r["label"], 0) < per_class:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
            texts.append(r["text"])
            ys.append(index[r["label"]])
    return texts, ys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="bbc-news,spam,movie-reviews,tweet-sentiment")
    ap.add_argument("--cap", type=int, default=150)
    ap.add_argument("--extra", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--configs", default="A,B,C,E")
    ap.add_argument("--no-truncation-check", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from adaptreg._util import seed_everything
    from adaptreg.base import load_base
    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.data.tasks import load_task
    from adaptreg.train import (TaskModel, build_peft_model, cache_logits, fit, frozen_features, linear_probe,
                                log_loss, probe_head, probe_logits, resolve_length)
    from adaptreg.trunk import TrunkCache, split_point

    lb = load_base("minilm")
    out: dict = {"cap": args.cap, "extra_per_class": args.extra, "epochs": args.epochs, "tasks": {}}
    for name in args.tasks.split(","):
        td = load_task(name, max_per_class=args.cap)
        ex_texts, ex_y = extra_rows(name, td, args.extra)
        held = {"val": (td.val.texts, td.val.y), "extra": (ex_texts, ex_y)}
        rec: dict = {"n_train": len(td.train), "n_val": len(td.val), "n_extra": len(ex_texts), "labels": td.labels}
        base_train = TrainSettings()
        ml = resolve_length(lb, td, base_train)
        rec["max_length"] = ml

        def probe_at(length: int, trunc: str) -> dict:
            c = {s: TrunkCache(lb.model, lb.tokenizer, t, length, 0, trunc) for s, t in
                 (("train", td.train.texts), ("val", held["val"][0]), ("extra", held["extra"][0]))}
            f = {s: frozen_features(lb.model, c[s], 64) for s in c}
            clf = linear_probe(f["train"], td.train.y, f["val"], td.val.y, 0)
            return {s: {"acc": float((clf.predict(f[s]) == np.asarray(held[s][1])).mean()),
                        "loss": log_loss(probe_logits(clf, f[s]), held[s][1])} for s in held}

        if not args.no_truncation_check and ml >= 128:
            rec["truncation_probe"] = {f"{L}/{tr}": probe_at(L, tr) for L, tr in
                                       ((128, "head"), (128, "head+tail"), (256, "head"), (256, "head+tail"))}
            print(name, "truncation", rec["truncation_probe"], file=sys.stderr, flush=True)
        rec["runs"] = {}
        for key in args.configs.split(","):
            cfg = CONFIGS[key]
            train = TrainSettings(epochs=args.epochs, patience=0, lr=cfg["lr"], adapted_layers=cfg["adapted_layers"],
                                  head_init=cfg["head_init"], max_length=ml, schedule=cfg.get("schedule", "constant"),
                                  base_dropout=cfg.get("base_dropout", True), truncation=cfg.get("truncation", "head+tail"))
            split = split_point(lb.model, train.adapted_layers)
            t0 = time.perf_counter()
            caches = {s: TrunkCache(lb.model, lb.tokenizer, t, ml, split, train.truncation) for s, t in
                      (("train", td.train.texts), ("val", held["val"][0]), ("extra", held["extra"][0]))}
            t_cache = time.perf_counter() - t0
            f = {s: frozen_features(lb.model, caches[s], 64) for s in caches}
            clf = linear_probe(f["train"], td.train.y, f["val"], td.val.y, 0)
            probe = {s: {"acc": float((clf.predict(f[s]) == np.asarray(held[s][1])).mean()),
                         "loss": log_loss(probe_logits(clf, f[s]), held[s][1])} for s in held}
            seed_everything(0)
            peft_model = build_peft_model(lb.model, lb.model_type, LoraSettings(), split=split)
            head = probe_head(clf, td.n_labels) if cfg["head_init"] == "probe" else torch.nn.Linear(lb.hidden_size, td.n_labels)
            model = TaskModel(peft_model, head, split, base_dropout=train.base_dropout)
            curve = []

            def on_epoch(epoch, m, record):
                z = cache_logits(m, caches["extra"], 64)
                curve.append({"epoch": epoch, "val_acc": record["val_accuracy"], "val_loss": record["val_loss"],
                              "extra_acc": float((z.argmax(1) == np.asarray(ex_y)).mean()), "extra_loss": log_loss(z, ex_y)})

            try:
                info = fit(model, lb.tokenizer, td, train, progress=False,
                           caches=caches, on_epoch=on_epoch)
            finally:
                peft_model.unload()
                for p in lb.model.parameters():
                    p.requires_grad_(False)
                for c in caches.values():
                    c.close()
            rec["runs"][key] = {"config": cfg, "probe": probe, "curve": curve, "train_seconds": info["train_seconds"],
                                "cache_seconds": t_cache, "examples_per_s": info["train_examples_per_s"]}
            print(name, key, f"{info['train_seconds']:.0f}s", "probe", probe,
                  [(c["epoch"], round(c["val_acc"], 3), round(c["extra_acc"], 3)) for c in curve], file=sys.stderr, flush=True)
        out["tasks"][name] = rec
    emit(out, args.json)


if __name__ == "__main__":
    sys.exit(main())
