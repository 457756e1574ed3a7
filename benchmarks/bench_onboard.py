"""Onboarding one task: `adaptreg onboard` at its defaults beside a plain PEFT script, wall clock and accuracy.

usage: python benchmarks/bench_onboard.py [--tasks bbc-news,spam,movie-reviews,tweet-sentiment] [--per-class 300]
                                          [--order adaptreg-first|plain-first] [--keep] [--json results.json]
                                          [--onboard-args "--cv-below 0"]

For each catalog task, two whole processes are timed from launch to exit, one after the other:
1. `adaptreg onboard bench-TASK --data TASK --max-per-class N --registry TMP/registry --json -q`, at
   every default (a fresh temporary registry per task, deleted afterwards unless --keep);
2. benchmarks/plain_peft.py, a LoRA classifier written as the PEFT docs show it (every layer, full
   base forward per batch, no early stopping), given the epochs adaptreg planned, the max_length,
   batch size and learning rate adaptreg used, the same per-class cap and seed 0.

Each figure is a ratio measured side by side in one run on this machine (ratio = adaptreg wall
seconds / plain wall seconds), not an absolute time to compare across machines. Also recorded: the
test accuracy of what adaptreg registered (adapter or linear probe), the adapter's and the probe's
own test accuracy, the plain script's test accuracy, and the difference in points. Checks per
task: ratio <= 0.5 and adaptreg test accuracy >= plain test accuracy - 0.005.

--onboard-args passes extra options to `adaptreg onboard` (the plain script still gets the epochs,
length, batch size and learning rate adaptreg reports), to measure what a setting costs or saves;
without it every default holds, which is what the targets are about.

With --order plain-first the plain script runs first, so adaptreg's epochs and max_length are
planned beforehand with adaptreg's own rules (adaptreg.train.auto_epochs, adaptreg.trunk.auto_max_length)
and checked against what adaptreg then reports (settings_match).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402

DEFAULT_TASKS = "bbc-news,spam,movie-reviews,tweet-sentiment"
PLAIN = HERE / "plain_peft.py"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def adaptreg_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "adaptreg"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "adaptreg.cli"]


def parse_json(stdout: str) -> dict[str, Any]:
    """The JSON object on stdout (indented or one line); anything printed before it is skipped."""
    text = stdout.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    dec = json.JSONDecoder()
    for i, line in enumerate(text.splitlines()):
        if line.lstrip().startswith("{"):
            rest = "\n".join(text.splitlines()[i:])
            try:
                return dec.raw_decode(rest.lstrip())[0]
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON object on stdout: {text[-500:]!r}")


def timed(cmd: list[str], env: dict[str, str], what: str) -> tuple[float, dict[str, Any]]:
    """Run ``cmd`` to completion; wall seconds of the whole process and its stdout JSON."""
    log(f"[{what}] {shlex.join(cmd)}")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}) after {wall:.1f} s:\n{tail}")
    return wall, parse_json(proc.stdout)


def plan_settings(task: str, per_class: int) -> dict[str, Any]:
    """adaptreg's own plan for epochs and max_length at its defaults (used only with --order plain-first)."""
    from transformers import AutoConfig, AutoTokenizer

    from adaptreg.base import resolve_base
    from adaptreg.config import TrainSettings
    from adaptreg.data.tasks import load_task
    from adaptreg.train import auto_epochs
    from adaptreg.trunk import auto_max_length

    ts = TrainSettings()
    td = load_task(task, max_per_class=per_class, seed=ts.seed)
    path = resolve_base("minilm").path
    limit = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 512) or 512)
    max_length = int(ts.max_length) or auto_max_length(AutoTokenizer.from_pretrained(path), td.train.texts,
                                                       min(int(ts.length_cap), limit))
    return {"epochs": auto_epochs(len(td.train.texts), ts.batch_size, ts), "max_length": max_length,
            "batch_size": ts.batch_size, "lr": ts.lr}


def plain_cmd(task: str, per_class: int, s: dict[str, Any]) -> list[str]:
    return [sys.executable, str(PLAIN), "--task", task, "--per-class", str(per_class), "--epochs", str(s["epochs"]),
            "--max-length", str(s["max_length"]), "--batch-size", str(s["batch_size"]), "--lr", repr(float(s["lr"])),
            "--seed", "0"]


def bench_task(task: str, per_class: int, order: str, keep: bool, env: dict[str, str],
               onboard_args: "list[str] | tuple[str, ...]" = ()) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix=f"bench-onboard-{task}-")
    try:
        a_cmd = adaptreg_cmd() + ["onboard", f"bench-{task}", "--data", task, "--max-per-class", str(per_class),
                                  "--registry", str(Path(tmp) / "registry"), "--json", "-q", *onboard_args]
        planned = None
        if order == "plain-first":
            planned = plan_settings(task, per_class)
            p_cmd = plain_cmd(task, per_class, planned)
            p_wall, p_out = timed(p_cmd, env, f"{task}: plain")
            a_wall, a_out = timed(a_cmd, env, f"{task}: adaptreg")
        else:
            a_wall, a_out = timed(a_cmd, env, f"{task}: adaptreg")
        tr, m = a_out["training"], a_out["metrics"]
        used = {"epochs": int(tr["epochs_planned"]), "max_length": int(tr["max_length"]),
                "batch_size": int(tr["batch_size"]), "lr": float(tr["lr"])}
        if order != "plain-first":
            p_cmd = plain_cmd(task, per_class, used)
            p_wall, p_out = timed(p_cmd, env, f"{task}: plain")
        elif planned != used:
            log(f"WARNING {task}: planned settings {planned} differ from adaptreg's {used}; the plain run used the planned ones")
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    a_acc, p_acc = float(m["test_accuracy"]), float(p_out["test_accuracy"])
    ratio = a_wall / p_wall if p_wall > 0 else float("nan")
    row = {
        "task": task, "per_class": per_class,
        "adaptreg_wall_s": round(a_wall, 2), "plain_wall_s": round(p_wall, 2), "ratio": round(ratio, 4),
        "adaptreg_test_accuracy": a_acc, "adaptreg_adapter_test_accuracy": m.get("adapter_test_accuracy"),
        "probe_test_accuracy": m.get("probe_test_accuracy"),
        "registered": (a_out.get("selection") or {}).get("chosen", "adapter"),
        "plain_test_accuracy": p_acc, "accuracy_diff_points": round(100 * (a_acc - p_acc), 2),
        "ratio_ok": bool(ratio <= 0.5), "accuracy_ok": bool(a_acc >= p_acc - 0.005),
        "settings": used, "settings_match": None if planned is None else planned == used,
        "adaptreg": {"train_seconds": m.get("train_seconds"), "epochs_planned": tr.get("epochs_planned"),
                     "epochs_run": tr.get("epochs_run"), "best_epoch": tr.get("best_epoch"),
                     "adapted_layers": tr.get("adapted_layers"), "truncation": tr.get("truncation"),
                     "n_train": (a_out.get("data") or {}).get("n_train"), "n_test": (a_out.get("data") or {}).get("n_test"),
                     "seconds_by_phase": a_out.get("seconds"),
                     "decision": (a_out.get("selection") or {}).get("paired")},
        "plain": {"train_seconds": p_out.get("train_seconds"), "wall_seconds_in_process": p_out.get("wall_seconds"),
                  "n_train": p_out.get("n_train"), "n_test": p_out.get("n_test")},
        "commands": {"adaptreg": shlex.join(a_cmd), "plain": shlex.join(p_cmd)},
    }
    log(f"{task}: adaptreg {a_wall:.1f} s ({row['registered']}, test {a_acc:.4f}) | plain {p_wall:.1f} s "
        f"(test {p_acc:.4f}) | ratio {ratio:.3f} | diff {row['accuracy_diff_points']:+.2f} pts")
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated catalog task names")
    ap.add_argument("--per-class", type=int, default=300, help="training examples per class (cap), both sides")
    ap.add_argument("--order", choices=("adaptreg-first", "plain-first"), default="adaptreg-first")
    ap.add_argument("--keep", action="store_true", help="keep the temporary registries")
    ap.add_argument("--onboard-args", default="",
                    help="extra `adaptreg onboard` options, one string (e.g. \"--cv-below 0\"); default: none, every default")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    onboard_args = shlex.split(args.onboard_args)
    if onboard_args and args.order == "plain-first":
        ap.error("--onboard-args goes with --order adaptreg-first: the plain script must follow adaptreg's own plan")

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    rows = [bench_task(t, args.per_class, args.order, args.keep, env, onboard_args) for t in tasks]

    settings = f"with {shlex.join(onboard_args)}" if onboard_args else "defaults"
    out = {
        "benchmark": f"onboard: adaptreg onboard ({settings}) vs a plain PEFT script, whole-process wall clock",
        "tasks": tasks, "per_class": args.per_class, "order": args.order, "onboard_args": onboard_args,
        "python": sys.executable, "cpu_count": os.cpu_count(),
        "results": rows,
        "summary": {
            "max_ratio": max(r["ratio"] for r in rows),
            "min_accuracy_diff_points": min(r["accuracy_diff_points"] for r in rows),
            "all_ratio_ok": all(r["ratio_ok"] for r in rows),
            "all_accuracy_ok": all(r["accuracy_ok"] for r in rows),
            "registered": {r["task"]: r["registered"] for r in rows},
        },
        "commands": [c for r in rows for c in (
            (r["commands"]["plain"], r["commands"]["adaptreg"]) if args.order == "plain-first"
            else (r["commands"]["adaptreg"], r["commands"]["plain"]))],
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
    emit(out, args.json_out)
    return out


if __name__ == "__main__":
    main()
