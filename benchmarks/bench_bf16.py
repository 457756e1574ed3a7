"""Is bf16 autocast worth it on this CPU, and what does each adapted-layer count cost? Branch
training steps and full inference forwards, fp32 vs ``torch.autocast("cpu", dtype=torch.bfloat16)``,
fp32 training steps with 1, 2, 3 and all 6 layers adapted (the trunk cached), and a 2-layer step
with the frozen layers' own dropout on vs off (onboarding's ``--base-dropout``), side by side in
one process.

usage: python benchmarks/bench_bf16.py [--steps 20] [--length 128] [--json out.json]

Random token states / ids of MiniLM's shape (the speed of a matmul does not depend on the values).
Rounds alternate fp32 and bf16 so that machine load hits both alike; the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _report import emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from adaptreg.base import load_base
    from adaptreg.config import LoraSettings
    from adaptreg.train import TaskModel, build_peft_model

    lb = load_base("minilm")
    cpu_flags = open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else ""
    pm = build_peft_model(lb.model, lb.model_type, LoraSettings(), split=4)
    model = TaskModel(pm, torch.nn.Linear(lb.hidden_size, 3), 4, base_dropout=False)
    model.train(True)
    h = torch.randn(args.batch, args.length, lb.hidden_size)
    mask = torch.ones(args.batch, args.length, dtype=torch.long)
    ids = torch.randint(1000, 20000, (2 * args.batch, args.length))
    times: dict[str, list[float]] = {"train_fp32": [], "train_bf16": [], "infer_fp32": [], "infer_bf16": []}
    for step in range(args.steps):
        for bf16 in (False, True):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model.from_trunk(h, mask)
            out.float().sum().backward()
            times["train_bf16" if bf16 else "train_fp32"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                pm.get_base_model()(input_ids=ids, attention_mask=torch.ones_like(ids))
            times["infer_bf16" if bf16 else "infer_fp32"].append(time.perf_counter() - t)
    for base_dropout in (True, False):
        model.base_dropout = base_dropout
        times[f"train_base_dropout_{'on' if base_dropout else 'off'}"] = []
        for step in range(max(4, args.steps // 2)):
            model.train(True)
            t = time.perf_counter()
            model.from_trunk(h, mask).sum().backward()
            times[f"train_base_dropout_{'on' if base_dropout else 'off'}"].append(time.perf_counter() - t)
    pm.unload()
    for adapted in (1, 2, 3, 6):
        split = 6 - adapted if adapted < 6 else 0
        pm = build_peft_model(lb.model, lb.model_type, LoraSettings(), split=split)
        m = TaskModel(pm, torch.nn.Linear(lb.hidden_size, 3), split, base_dropout=False)
        m.train(True)
        times[f"train_adapted_{adapted}"] = []
        for step in range(max(4, args.steps // 2)):
            t = time.perf_counter()
            m.from_trunk(h, mask).sum().backward()
            times[f"train_adapted_{adapted}"].append(time.perf_counter() - t)
        pm.unload()
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    emit({"cpu_avx512_bf16": "avx512_bf16" in cpu_flags, "cpu_amx_bf16": "amx_bf16" in cpu_flags,
          "threads": torch.get_num_threads(), "length": args.length, "batch": args.batch,
          "median_seconds": med, "speedup_train": med["train_fp32"] / med["train_bf16"],
          "speedup_inference": med["infer_fp32"] / med["infer_bf16"]}, args.json)


if __name__ == "__main__":
    sys.exit(main())
