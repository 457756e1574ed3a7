"""Registry lookup benchmark: 1,000 registered versions, in-process lookup and ``adaptreg lookup`` wall time.

    python benchmarks/bench_registry.py            # 1,000 versions, 500 lookups, 10 CLI runs
    python benchmarks/bench_registry.py --versions 200 --cli-runs 5 --json

Version 1 is a real registration (a LoRA adapter on a tiny random BERT, run + artifacts + ready
protocol); versions 2..N are created with ``MlflowClient.create_model_version`` pointing at the
same stored files with the same tags (what a registration writes to the model registry, minus
the run). The ``production`` alias points at the middle version. Targets (issue 4): in-process
lookup by alias p50 <= 10 ms; the whole ``adaptreg lookup`` command <= 1.0 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_artifact(directory: Path) -> Path:
    """A real, small adapter artifact (tiny random BERT, LoRA r=4 on query/value)."""
    import peft
    import torch
    from transformers import BertConfig, BertModel

    from adaptreg import artifact
    from adaptreg.base import fingerprint

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    fp = fingerprint(model)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"],
                                                            init_lora_weights=False))
    directory.mkdir(parents=True)
    peft_model.save_pretrained(str(directory))
    labels = ["a", "b", "c"]
    artifact.save_head(directory, torch.nn.Linear(32, 3), labels)
    artifact.write_files_checksums(directory, {
        "adaptreg_version": "0.1.0", "task": "news", "created_at": "2026-01-01T00:00:00+00:00",
        "base": {"id": "tiny-bert", "fingerprint": fp, "model_type": "bert", "hidden_size": 32, "num_parameters": 0},
        "data": {"fingerprint": "sha256:" + "0" * 64, "source": "bench", "n_train": 1, "n_val": 1, "n_test": 1},
        "labels": labels,
        "adapter": {"kind": "lora", "rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["query", "value"],
                    "rslora": False, "init_from": None},
        "training": {"epochs": 1, "batch_size": 16, "lr": 5e-4, "seed": 0, "epochs_run": 1, "best_epoch": 1},
        "history": [{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5, "val_macro_f1": 0.5}],
        "metrics": {"test_accuracy": 0.5, "test_macro_f1": 0.5, "probe_test_accuracy": 0.4, "trainable_pct": 1.0,
                    "train_seconds": 1.0},
        "report": {}, "parents": [], "libraries": {},
    })
    return directory


def fill(location: Path, n: int) -> tuple[float, int]:
    """Register version 1 for real, then versions 2..n as model versions on the same files."""
    from adaptreg.registry import STATUS_TAG, Registry

    t0 = time.perf_counter()
    reg = Registry(location)
    with tempfile.TemporaryDirectory() as tmp:
        first = reg.register(build_artifact(Path(tmp) / "adapter"))
    client = reg.client
    tags = client.get_model_version("news", "1").tags
    assert tags[STATUS_TAG] == "ready"
    for v in range(2, n + 1):
        t = dict(tags)
        t["adaptreg.metric.test_accuracy"] = json.dumps(round(0.5 + 0.4 * ((v * 7919) % n) / n, 4))
        client.create_model_version("news", source=first["source"], run_id=first["run_id"], tags=t,
                                    await_creation_for=0)
    middle = max(1, n // 2)
    client.set_registered_model_alias("news", "production", str(middle))
    return time.perf_counter() - t0, middle


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(s), "p95_ms": 1000 * s[min(len(s) - 1, int(0.95 * len(s)))],
            "max_ms": 1000 * s[-1]}


def time_calls(fn, n: int) -> dict[str, float]:
    fn()  # warm (first connection, first parse)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--lookups", type=int, default=500, help="in-process lookups to time (fast path)")
    ap.add_argument("--client-lookups", type=int, default=50, help="in-process lookups through MlflowClient")
    ap.add_argument("--cli-runs", type=int, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="build the registry here and keep it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    tmp = None
    if args.keep is not None:
        location = args.keep
        if location.exists():
            sys.exit(f"{location} exists: give a new directory to --keep")
    else:
        tmp = tempfile.mkdtemp(prefix="adaptreg-bench-")
        location = Path(tmp) / "registry"
    try:
        fill_s, middle = fill(location, args.versions)

        from adaptreg.registry import Registry

        reg = Registry(location)
        assert reg.lookup("news", alias="production")["version"] == middle
        fast_alias = time_calls(lambda: reg.lookup("news", alias="production"), args.lookups)
        fast_version = time_calls(lambda: reg.lookup("news", version=middle), args.lookups)
        fast_default = time_calls(lambda: reg.lookup("news"), args.lookups)
        fast_best = time_calls(lambda: reg.lookup("news", best="test_accuracy"), max(5, args.lookups // 20))
        slow = Registry(location, fast=False)
        client_alias = time_calls(lambda: slow.lookup("news", alias="production"), args.client_lookups)
        assert slow.lookup("news", alias="production") == reg.lookup("news", alias="production")

        exe = shutil.which("adaptreg", path=str(Path(sys.executable).parent)) or shutil.which("adaptreg")
        cmd = [exe, "lookup", "news", "--alias", "production", "--json", "--registry", str(location)]
        cli = []
        for _ in range(args.cli_runs):
            t = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            cli.append(time.perf_counter() - t)
            assert json.loads(out.stdout)["version"] == middle
        imports = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import mlflow"], check=True)
            imports.append(time.perf_counter() - t)

        result = {
            "versions": args.versions, "fill_seconds": round(fill_s, 1),
            "lookup_alias_fast": fast_alias, "lookup_version_fast": fast_version,
            "lookup_default_fast": fast_default, "lookup_best_fast": fast_best,
            "lookup_alias_mlflow_client": client_alias,
            "cli_lookup_s": {"p50": statistics.median(cli), "max": max(cli), "runs": len(cli)},
            "python_import_mlflow_s": {"min": min(imports), "median": statistics.median(imports)},
            "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        }
        if args.json:
            print(json.dumps(result, indent=2))
            return
        print(f"{args.versions} versions registered in {fill_s:.1f} s ({os.cpu_count()} CPUs, "
              f"load {result['load_avg_1m']:.2f})")
        for name in ("lookup_alias_fast", "lookup_version_fast", "lookup_default_fast", "lookup_best_fast",
                     "lookup_alias_mlflow_client"):
            r = result[name]
            print(f"{name:28s} p50 {r['p50_ms']:7.2f} ms   p95 {r['p95_ms']:7.2f} ms   max {r['max_ms']:7.2f} ms")
        c = result["cli_lookup_s"]
        print(f"{'adaptreg lookup (CLI)':28s} p50 {c['p50']:7.3f} s    max {c['max']:.3f} s   ({c['runs']} runs)")
        i = result["python_import_mlflow_s"]
        label = 'python -c "import mlflow"'
        print(f"{label:28s} min {i['min']:7.3f} s    median {i['median']:.3f} s")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
