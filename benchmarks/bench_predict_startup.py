"""Whole-process wall time of `adaptreg predict --text ...` against a registry of four tasks.

Builds a temporary registry on the base (4 random rank-8 adapters on the top 2 layers and a
router, as benchmarks/bench_serve.py does), runs the command once to warm the OS file cache and
record the base's fingerprint, then alternates runs with the transformers-free base loader
(adaptreg.fastbert, the default) and with it turned off (ADAPTREG_FAST_BASE=0), so both are
measured side by side under the same load. `python -c "import torch"` is timed alongside as the
floor any torch program pays.

    python benchmarks/bench_predict_startup.py --runs 5 --json docs/figures/predict-startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--runs", type=int, default=5, help="Runs of each variant (alternating).")
    ap.add_argument("--json", default=None, help="Write the results here.")
    args = ap.parse_args(argv)

    from bench_serve import build_registry

    from adaptreg.base import load_base

    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    lb = load_base(args.base)  # through transformers, as training does
    reg, texts, _ = build_registry(lb, work, 4)
    text = texts[0]
    predict = [sys.executable, "-c", "from adaptreg.cli import run; run()", "predict", "--text", text,
               "--registry", str(work / "reg"), "--json"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    variants = {"fast base loader (default)": {**env},
                "transformers loader (ADAPTREG_FAST_BASE=0)": {**env, "ADAPTREG_FAST_BASE": "0"},
                "python -c 'import torch'": {**env}}
    for name in list(variants)[:2]:  # warm-up: file cache, compiled bytecode
        dt, res = timed(predict, variants[name])
        if res.returncode:
            raise SystemExit(f"{name}: exit {res.returncode}\n{res.stderr}")
    times: dict[str, list[float]] = {k: [] for k in variants}
    answers = {}
    for _ in range(args.runs):
        for name, e in variants.items():
            cmd = [sys.executable, "-c", "import torch"] if name.startswith("python") else predict
            dt, res = timed(cmd, e)
            if res.returncode:
                raise SystemExit(f"{name}: exit {res.returncode}\n{res.stderr}")
            times[name].append(dt)
            if not name.startswith("python"):
                answers[name] = json.loads(res.stdout)
    same = len({json.dumps([(r["task"], r["label"]) for r in a]) for a in answers.values()}) == 1
    out = {"base": args.base, "tasks": 4, "runs": args.runs, "text": text, "same_answer": same,
           "seconds": {k: {"median": statistics.median(v), "min": min(v), "all": v} for k, v in times.items()},
           "load_average": os.getloadavg()}
    fast, slow = (out["seconds"][k]["median"] for k in list(variants)[:2])
    out["ratio_fast_to_transformers"] = fast / slow
    for k, v in out["seconds"].items():
        print(f"{k:45s} median {v['median']:.2f} s  min {v['min']:.2f} s", file=sys.stderr)
    print(f"same answer: {same}; fast / transformers = {out['ratio_fast_to_transformers']:.2f}; "
          f"load average {out['load_average']}", file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
