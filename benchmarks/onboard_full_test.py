"""Onboarding at the defaults, scored on the catalog's whole test split as well as the capped one.

usage: python benchmarks/onboard_full_test.py [--tasks bbc-news,spam,movie-reviews,tweet-sentiment]
                                              [--per-class 300] [--plain] [--json results.json]

`adaptreg onboard TASK --data NAME --max-per-class N` tests on the capped test split: N/4 rows per
class, 150 rows for a two-class task at N=300, so one row is 0.67 points. This script trains each
task exactly as that command does (the same `adaptreg.train.train_task` at every default, the same
capped train/val rows and seed) and then scores what would be registered, and the frozen-base
probe, on every row of the catalog's test split, which the capped test split is a subset of. Test
rows are read once, after training; nothing is chosen on them.

Reported per task: accuracy of the registered model (adapter or probe) and of the probe on the
capped test rows (they equal `adaptreg onboard`'s own figures; checked), on the whole test split,
and on the test rows outside the capped split; the paired counts b (rows only the registered model
gets right) and c (only the probe), and z = (b - c) / sqrt(b + c) on the whole split. Every figure
comes as accuracy and as balanced accuracy (the mean of the per-class recalls): the capped test
split has the capped training rows' class mix (equal classes at N per class), the whole split the
dataset's own (spam: 822 ham, 365 spam), so the whole split's balanced accuracy estimates what the
capped split measures, on many more rows. With --plain,
benchmarks/plain_peft.py (the baseline of bench_onboard.py, with the epochs, length, batch size and
learning rate adaptreg used) is trained too and scored on both splits.
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402
from bench_onboard import DEFAULT_TASKS, log, parse_json, plain_cmd  # noqa: E402


def score(pred: Any, y: Any, rows: Any) -> float | None:
    return float((pred[rows] == y[rows]).mean()) if rows.any() else None


def balanced(pred: Any, y: Any, rows: Any) -> float | None:
    """The mean of the per-class recalls: what accuracy would be with every class equally frequent."""
    recalls = [float((pred[rows & (y == k)] == k).mean()) for k in sorted(set(y[rows].tolist()))]
    return sum(recalls) / len(recalls) if recalls else None


def plain_run(name: str, per_class: int, trained: Any, settings: Any) -> dict[str, Any]:
    """bench_onboard.py's plain PEFT command with adaptreg's epochs and length, scored on both splits."""
    cmd = plain_cmd(name, per_class, {"epochs": trained.fit_info["epochs_planned"], "max_length": trained.max_length,
                                      "batch_size": settings.batch_size, "lr": settings.lr}) + ["--whole-test"]
    log(f"[{name}: plain] {shlex.join(cmd)}")
    out = parse_json(subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout)
    return {"capped": out["test_accuracy"], "whole": out["whole_test_accuracy"],
            "capped_balanced": out["test_balanced_accuracy"], "whole_balanced": out["whole_test_balanced_accuracy"],
            "command": shlex.join(cmd[1:])}


def run_task(name: str, per_class: int, lb: Any, plain: bool = False) -> dict[str, Any]:
    import numpy as np

    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.data.tasks import load_task
    from adaptreg.train import cache_logits, frozen_features, probe_logits, train_task
    from adaptreg.trunk import TrunkCache

    settings = TrainSettings()
    capped = load_task(name, max_per_class=per_class, seed=settings.seed)
    whole = load_task(name, seed=settings.seed)
    if whole.labels != capped.labels:
        raise SystemExit(f"{name}: label maps differ between the capped and the whole task")
    in_capped_test = set(capped.test.texts)
    missing = in_capped_test - set(whole.test.texts)
    if missing:
        raise SystemExit(f"{name}: {len(missing)} capped test rows are not in the whole test split")
    t0 = time.perf_counter()
    trained = train_task(lb, capped, LoraSettings(), settings, progress=False)
    seconds = time.perf_counter() - t0
    try:
        cache = TrunkCache(lb.model, lb.tokenizer, whole.test.texts, trained.max_length, trained.split,
                           trained.truncation, settings.eval_batch_size, int(settings.cache_ram_mb) * 1024 ** 2)
        try:
            registered = cache_logits(trained.model, cache, settings.eval_batch_size).argmax(1)
            with trained.model.peft_model.disable_adapter():
                feats = frozen_features(lb.model, cache, settings.eval_batch_size)
        finally:
            cache.close()
        probe = probe_logits(trained.probe, feats).argmax(1)
    finally:
        trained.model.peft_model.unload()
        for p in lb.model.parameters():
            p.requires_grad_(False)
    plain_out = plain_run(name, per_class, trained, settings) if plain else None
    y = np.asarray(whole.test.y)
    cap_rows = np.array([t in in_capped_test for t in whole.test.texts])
    own = trained.reports["chosen"]["test"]["accuracy"], trained.reports["probe"]["test"]["accuracy"]
    on_capped = score(registered, y, cap_rows), score(probe, y, cap_rows)
    if any(abs(a - b) > 1e-9 for a, b in zip(own, on_capped)):
        raise SystemExit(f"{name}: the capped-split figures {on_capped} differ from train_task's own {own}")
    a_ok, p_ok = registered == y, probe == y
    b, c = int((a_ok & ~p_ok).sum()), int((~a_ok & p_ok).sum())
    everything = np.ones_like(cap_rows)
    splits = {"capped": cap_rows, "whole": everything, "outside_capped": ~cap_rows}
    out = {
        "task": name, "per_class": per_class, "registered": trained.chosen,
        "n_test_capped": int(cap_rows.sum()), "n_test_whole": len(y),
        "whole_paired": {"registered_only": b, "probe_only": c,
                         "z": round((b - c) / math.sqrt(b + c), 3) if b + c else 0.0},
        "decision": trained.paired, "train_seconds": round(seconds, 1),
    }
    for split, rows in splits.items():
        fig = {"registered": score(registered, y, rows), "probe": score(probe, y, rows),
               "registered_balanced": balanced(registered, y, rows), "probe_balanced": balanced(probe, y, rows)}
        if plain_out is not None and split != "outside_capped":
            fig["plain"], fig["plain_balanced"] = plain_out[split], plain_out[f"{split}_balanced"]
        for kind in ("", "_balanced"):
            r = fig[f"registered{kind}"]
            fig[f"gain_points{kind}"] = None if r is None else round(100 * (r - fig[f"probe{kind}"]), 2)
            if "plain" in fig:
                fig[f"vs_plain_points{kind}"] = round(100 * (r - fig[f"plain{kind}"]), 2)
        out[split] = fig
    if plain_out is not None:
        out["plain"] = plain_out
    log(f"{name}: {trained.chosen} registered; capped test {on_capped[0]:.4f} vs probe {on_capped[1]:.4f}; "
        f"whole test ({len(y)} rows) {out['whole']['registered']:.4f} vs {out['whole']['probe']:.4f} "
        f"(b={b}, c={c}, z={out['whole_paired']['z']}); balanced {out['whole']['registered_balanced']:.4f} "
        f"vs {out['whole']['probe_balanced']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--plain", action="store_true", help="also train and score benchmarks/plain_peft.py")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    from adaptreg.base import load_base

    lb = load_base("minilm")
    t0 = time.perf_counter()
    results = [run_task(name, args.per_class, lb, args.plain) for name in args.tasks.split(",")]
    names = [r["task"] for r in results]

    def per_task(key: str) -> dict[str, Any]:
        return {n: r["whole"].get(key) for n, r in zip(names, results)}

    summary: dict[str, Any] = {}
    for kind in ("", "_balanced"):
        gains = per_task(f"gain_points{kind}")
        summary[f"whole_gain_points{kind}"] = gains
        summary[f"whole_mean_gain_points{kind}"] = round(sum(gains.values()) / len(gains), 2)
        summary[f"whole_at_or_above_probe{kind}"] = all(g >= 0 for g in gains.values())
        if args.plain:
            summary[f"whole_vs_plain_points{kind}"] = per_task(f"vs_plain_points{kind}")
    emit({"benchmark": "onboard at the defaults, scored on the capped and on the whole catalog test split",
          "command": " ".join(["python", "benchmarks/onboard_full_test.py"] + sys.argv[1:]),
          "results": results, "summary": summary,
          "seconds": round(time.perf_counter() - t0, 1)}, args.json)


if __name__ == "__main__":
    main()
