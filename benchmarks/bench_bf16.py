"""Is bf16 autocast worth it on this CPU, and what does each adapted-layer count cost? Branch
training steps, full inference forwards, the trunk cache's pass and the predictor's packed pass,
fp32 vs ``torch.autocast("cpu", dtype=torch.bfloat16)``,
fp32 training steps with 1, 2, 3 and all 6 layers adapted (the trunk cached), and a 2-layer step
with the frozen layers' own dropout on vs off (onboarding's ``--base-dropout``), side by side in
one process.

usage: python benchmarks/bench_bf16.py [--steps 20] [--length 128] [--json out.json]
       [--registry DIR --task NAME --data CATALOG | --artifacts DIR] [--max-per-class N]
       (also Predictor.predict end to end)

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
    ap.add_argument("--registry", default=None, help="also time Predictor.predict end to end on a registered task")
    ap.add_argument("--artifacts", default=None, help="... or on a folder of adapter folders named by catalog task")
    ap.add_argument("--task", default=None, help="the registered task (with --registry)")
    ap.add_argument("--data", default=None, help="its catalog data: validation texts and 300 training texts are predicted")
    ap.add_argument("--max-per-class", type=int, default=None, help="the cap it was onboarded with (the same split)")
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
    # where onboarding and prediction run frozen layers: the trunk cache's padded pass (4 layers)
    # and the predictor's packed pass (all 6), fp32 against bf16 rounds alternating; and how far
    # bf16 moves the cached states (mean |difference| over mean |state|)
    from adaptreg.trunk import Packing, TrunkCache, packed_embed, packed_layer

    rows = [ids[i, : args.length - 8 * (i % 8)].tolist() for i in range(ids.shape[0])]  # lengths vary a little
    layers = list(lb.model.encoder.layer)
    heads = int(lb.model.config.num_attention_heads)
    caches = {}
    for key in ("cache_fp32", "cache_bf16", "packed_fp32", "packed_bf16"):
        times[key] = []
    for step in range(max(4, args.steps // 2)):
        for bf16 in (False, True):
            tag = "bf16" if bf16 else "fp32"
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if tag in caches:
                    caches[tag].close()  # an over-budget cache lives in a temporary file
                t = time.perf_counter()
                caches[tag] = TrunkCache(lb.model, lb.tokenizer, [""] * len(rows), args.length, 4, batch_size=64, ids=rows)
                times[f"cache_{tag}"].append(time.perf_counter() - t)
                t = time.perf_counter()
                with torch.inference_mode():
                    pk = Packing([len(r) for r in rows])
                    hp = packed_embed(lb.model, rows, pk)
                    for layer in layers:
                        hp = packed_layer(layer, hp, pk, heads)
                times[f"packed_{tag}"].append(time.perf_counter() - t)
    a = caches["fp32"].data.astype("float32")
    cache_rel_diff = float(abs(a - caches["bf16"].data.astype("float32")).mean() / abs(a).mean())
    for cache in caches.values():
        cache.close()
    predictor = predict_end_to_end(args, times) if (args.registry or args.artifacts) else None
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    emit({"cpu_avx512_bf16": "avx512_bf16" in cpu_flags, "cpu_amx_bf16": "amx_bf16" in cpu_flags,
          "threads": torch.get_num_threads(), "length": args.length, "batch": args.batch,
          "median_seconds": med, "speedup_train": med["train_fp32"] / med["train_bf16"],
          "speedup_inference": med["infer_fp32"] / med["infer_bf16"],
          "speedup_trunk_cache": med["cache_fp32"] / med["cache_bf16"],
          "speedup_packed_predict": med["packed_fp32"] / med["packed_bf16"],
          "trunk_cache_relative_difference": cache_rel_diff,
          **({"predictor": {**predictor, "speedup": med["predict_fp32"] / med["predict_bf16"]}} if predictor else {})},
         args.json)


def predict_end_to_end(args: argparse.Namespace, times: dict[str, list[float]]) -> dict:
    """``Predictor.predict`` under autocast vs fp32, every task's rows in one mixed call (each row
    with its own task, no routing): time, and whether the labels stay the same (agreement, and the
    accuracy of each). Rows: each task's validation split and up to 300 of its training rows."""
    from pathlib import Path

    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor
    from adaptreg.data.tasks import load_task

    if args.artifacts:
        dirs = {d.name: str(d) for d in sorted(Path(args.artifacts).iterdir()) if (d / "manifest.json").is_file()}
        p = Predictor.from_artifacts(load_base("minilm"), dirs)
        tasks = {t: t for t in dirs}  # folder name = catalog name
    else:
        p = Predictor(args.registry, tasks=[args.task], router=False)
        tasks = {args.task: args.data}
    texts, want, names = [], [], []
    for task, data in tasks.items():
        td = load_task(data, seed=0, max_per_class=args.max_per_class)
        rows = list(zip(td.val.texts, td.val.y)) + list(zip(td.train.texts[:300], td.train.y[:300]))
        texts += [t for t, _ in rows]
        want += [td.labels[y] for _, y in rows]
        names += [task] * len(rows)
    labels = {}
    times["predict_fp32"], times["predict_bf16"] = [], []
    for step in range(4):
        for bf16 in (False, True):
            p.bf16 = bf16
            t = time.perf_counter()
            out = p.predict(texts, task=names)
            times["predict_bf16" if bf16 else "predict_fp32"].append(time.perf_counter() - t)
            labels[bf16] = [o["label"] for o in out]
    per_task = {}
    for task in tasks:
        idx = [i for i, n in enumerate(names) if n == task]
        per_task[task] = {"rows": len(idx),
                          "agreement": sum(labels[False][i] == labels[True][i] for i in idx) / len(idx),
                          "accuracy_fp32": sum(labels[False][i] == want[i] for i in idx) / len(idx),
                          "accuracy_bf16": sum(labels[True][i] == want[i] for i in idx) / len(idx)}
    return {"rows": len(texts), "agreement": sum(a == b for a, b in zip(labels[False], labels[True])) / len(texts),
            "per_task": per_task}


if __name__ == "__main__":
    sys.exit(main())
