"""`adaptreg serve` under concurrent load vs. the Predictor's own batch throughput on the same rows.

usage: python benchmarks/bench_serve.py [--base minilm] [--tasks 4] [--rows 512] [--clients 16]
                                        [--per-request 1] [--max-batch 64] [--max-wait-ms 5]
                                        [--batch-size 32] [--rounds 3] [--no-unbatched]
                                        [--workdir DIR] [--json results.json]

Builds a registry of --tasks random LoRA adapters (top 2 layers, query and value, rank 8: the
onboarding defaults, without training: throughput does not depend on the weights' values) and a
router fitted on each task's synthetic texts, then measures, on the same --rows mixed-task texts
(routed, no task ids):

* batch: one ``Predictor.predict(rows)`` call in this process (best of --rounds);
* serve: a real ``adaptreg serve`` on 127.0.0.1, --clients threads each sending requests of
  --per-request texts over a kept-alive connection until every row is answered (best of --rounds);
* unbatched: the same server with ``--max-batch 1`` (one row per inference call), for contrast.

Prints rows/s for each, the ratios serve/batch and unbatched/batch, request latency percentiles
and the mean number of requests per inference batch read from ``/metrics``. Client threads share
the machine's cores with the server: on a 2-core machine they cost the server part of its CPU.
"""

from __future__ import annotations

import argparse
import copy
import csv
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit

VOCAB = {
    "news": "government minister election economy market shares bank inflation parliament policy tax budget trade".split(),
    "sport": "match goal striker league season coach keeper penalty final cup champions score team".split(),
    "reviews": "film movie actor plot scene director acting soundtrack boring brilliant sequel cinema script".split(),
    "tech": "software phone laptop chip cloud update battery screen app network server code data".split(),
    "food": "recipe oven flour sugar butter sauce garlic dinner bake fresh spicy taste salad".split(),
    "travel": "flight hotel beach museum passport train island journey luggage tour city visa coast".split(),
}
FILLER = "the a of to and in is it for on with as was at by this that from be are or have not".split()


def synthetic_rows(task: str, n_per_class: int, n_labels: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = VOCAB[task]
    rows = []
    for c in range(n_labels):
        own = words[c::n_labels]
        for i in range(n_per_class):
            n = rng.randint(20, 60)
            text = " ".join(rng.choice(own if rng.random() < 0.3 else words if rng.random() < 0.5 else FILLER)
                            for _ in range(n))
            rows.append({"text": f"{text} {i}", "label": f"{task}-{c}"})
    rng.shuffle(rows)
    return rows


def make_adapter(lb, task: str, td, out: Path, seed: int, rank: int = 8, layers: int = 2) -> Path:
    """A random LoRA adapter artifact on the top ``layers`` layers (what onboarding trains), no training."""
    import torch
    from peft import LoraConfig, get_peft_model

    from adaptreg import artifact

    n_layers = lb.model.config.num_hidden_layers
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=2.0 * rank, lora_dropout=0.0, target_modules=["query", "value"],
                     layers_to_transform=list(range(n_layers - layers, n_layers)), init_lora_weights=False)
    pm = get_peft_model(copy.deepcopy(lb.model), cfg)
    out.mkdir(parents=True, exist_ok=True)
    pm.save_pretrained(str(out), safe_serialization=True)
    artifact.save_head(out, torch.nn.Linear(lb.hidden_size, td.n_labels), td.labels)
    manifest = {
        "task": task, "adaptreg_version": "bench",
        "base": {"id": lb.id, "fingerprint": lb.fingerprint, "model_type": lb.model_type, "hidden_size": lb.hidden_size},
        "data": td.summary(), "labels": td.labels,
        "adapter": {"kind": "lora", "rank": rank, "alpha": 2.0 * rank, "targets": ["query", "value"], "rslora": False,
                    "init_from": None},
        "training": {"max_length": 128, "seed": seed}, "metrics": {"test_accuracy": None}, "parents": [],
    }
    artifact.write_files_checksums(out, manifest)
    return out


def build_registry(lb, workdir: Path, n_tasks: int) -> tuple[object, list[str]]:
    """A registry with ``n_tasks`` adapters and a router; returns it and mixed test texts."""
    from adaptreg.compose.router import Router, register_router
    from adaptreg.data.tasks import load_task
    from adaptreg.registry import Registry

    reg = Registry(str(workdir / "reg"))
    router = Router(max_length=128)
    feats, ys, tests = {}, {}, []
    for i, task in enumerate(list(VOCAB)[:n_tasks]):
        path = workdir / f"{task}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(synthetic_rows(task, 60, 2 + i % 2, seed=i))
        td = load_task(str(path))
        reg.register(make_adapter(lb, task, td, workdir / "adapters" / task, seed=i))
        feats[f"{task}@1"], ys[f"{task}@1"] = router.features(lb, td.train.texts), td.train.y
        tests += td.test.texts
    router.fit(feats, ys)
    register_router(reg, router)
    random.Random(0).shuffle(tests)
    return reg, tests


# --------------------------------------------------------------------------- load generation

def _request(conn: http.client.HTTPConnection, texts: list[str]) -> dict:
    conn.request("POST", "/predict", body=json.dumps({"texts": texts}), headers={"content-type": "application/json"})
    res = conn.getresponse()
    body = res.read()
    if res.status != 200:
        raise RuntimeError(f"HTTP {res.status}: {body[:200]!r}")
    return json.loads(body)


def load_test(url: str, rows: list[str], clients: int, per_request: int) -> dict:
    """Every row answered once, by ``clients`` threads; rows/s and request latencies."""
    host = urlparse(url)
    chunks = [rows[i : i + per_request] for i in range(0, len(rows), per_request)]
    lock, latencies, answered, errors = threading.Lock(), [], [0], []
    it = iter(chunks)

    def worker() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
        try:
            while True:
                with lock:
                    chunk = next(it, None)
                if chunk is None:
                    return
                t = time.perf_counter()
                out = _request(conn, chunk)
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    answered[0] += len(out["predictions"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    if answered[0] != len(rows):
        raise RuntimeError(f"{answered[0]} rows answered of {len(rows)}")
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"rows_per_s": len(rows) / wall, "wall_s": wall, "requests": len(chunks),
            "latency_p50_ms": 1000 * q[49], "latency_p95_ms": 1000 * q[94]}


def batch_stats(url: str) -> dict:
    host = urlparse(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()

    def value(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else float("nan")

    batches = value("adaptreg_batch_requests_count")
    return {"batches": batches, "mean_requests_per_batch": value("adaptreg_batch_requests_sum") / batches,
            "mean_rows_per_batch": value("adaptreg_batch_rows_sum") / batches}


def start_server(registry: Path, base: str, max_batch: int, max_wait_ms: float, batch_size: int, log: Path):
    cmd = [sys.executable, "-c", "from adaptreg.cli import run; run()", "serve", "--registry", str(registry),
           "--base", base, "--port", "0", "--poll", "0", "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--batch-size", str(batch_size), "--max-texts", "4096"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the server did not start:\n{log.read_text()}")
    return proc, url


def stop_server(proc) -> None:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_run(args, registry: Path, rows: list[str], max_batch: int, log: Path) -> dict:
    proc, url = start_server(registry, args.base, max_batch, args.max_wait_ms, args.batch_size, log)
    try:
        load_test(url, rows[: min(len(rows), 4 * args.clients)], args.clients, args.per_request)  # warm-up
        runs = [load_test(url, rows, args.clients, args.per_request) for _ in range(args.rounds)]
        best = max(runs, key=lambda r: r["rows_per_s"])
        return {**best, **batch_stats(url), "max_batch": max_batch}
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--tasks", type=int, default=4, help=f"adapters in the registry (at most {len(VOCAB)})")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    ap.add_argument("--per-request", type=int, default=1, help="texts per request")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-unbatched", action="store_true", help="skip the --max-batch 1 server run")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    if not 1 <= args.tasks <= len(VOCAB):
        ap.error(f"--tasks must be in 1..{len(VOCAB)}")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="adaptreg-bench-serve-")
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        lb = load_base(args.base)
        t = time.perf_counter()
        reg, tests = build_registry(lb, workdir, args.tasks)
        print(f"registry with {args.tasks} adapters and a router in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows = (tests * (args.rows // max(len(tests), 1) + 1))[: args.rows]

        pred = Predictor(reg, base=lb)
        pred.predict(rows[:64], batch_size=args.batch_size)  # fold every branch, warm the allocator
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            pred.predict(rows, batch_size=args.batch_size)
            times.append(time.perf_counter() - t)
        batch = {"rows_per_s": len(rows) / min(times), "wall_s": min(times)}
        print(f"batch: {batch['rows_per_s']:.1f} rows/s", file=sys.stderr)
        del pred

        serve = serve_run(args, workdir / "reg", rows, args.max_batch, workdir / "serve.log")
        print(f"serve: {serve['rows_per_s']:.1f} rows/s, {serve['mean_requests_per_batch']:.1f} requests per batch",
              file=sys.stderr)
        out = {"base": lb.id, "tasks": args.tasks, "rows": len(rows), "clients": args.clients,
               "per_request": args.per_request, "max_wait_ms": args.max_wait_ms, "batch_size": args.batch_size,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "batch": batch, "serve": serve, "serve_over_batch": serve["rows_per_s"] / batch["rows_per_s"]}
        if not args.no_unbatched:
            unb = serve_run(args, workdir / "reg", rows, 1, workdir / "serve-unbatched.log")
            print(f"unbatched: {unb['rows_per_s']:.1f} rows/s", file=sys.stderr)
            out["unbatched"] = unb
            out["unbatched_over_batch"] = unb["rows_per_s"] / batch["rows_per_s"]
        emit(out, args.json_out)
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
