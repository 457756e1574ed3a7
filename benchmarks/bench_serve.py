"""`adaptreg serve` under load at concurrency 1, 8 and 32, with a promotion mid-run, vs. in-process batch throughput.

usage: python benchmarks/bench_serve.py [--base minilm] [--tasks 4] [--rows 512]
                                        [--requests 200,800,2400] [--concurrency 1,8,32]
                                        [--max-batch 64] [--max-wait-ms 5] [--batch-size 32] [--poll 2]
                                        [--time-limit 240] [--rounds 2] [--tune MB:MS[:BS],...]
                                        [--tune-requests 400] [--unbatched 0]
                                        [--workdir DIR] [--json results.json]

One invocation, one real ``adaptreg serve`` subprocess on 127.0.0.1. It builds a temporary
registry of --tasks random LoRA adapters (top 2 layers, query and value, rank 8: the onboarding
defaults, without training: speed does not depend on the weights' values); the first task has
two versions (version 2 trained on new rows of the same task), ``production`` on version 1, and a
router fitted on every task version's synthetic texts. Then, on the same --rows mixed-task texts
(routed, no task ids):

1. batch: one ``Predictor.predict(rows)`` call in this process, what ``adaptreg predict --data``
   does, at batch size 32 (its default) and at the server's --batch-size, --rounds calls each,
   measured while the server sits idle just before the top level and again just after it; the
   fastest call of all is the reference (other work on a shared machine during one measurement
   cannot flatter the server);
2. the server at each concurrency of --concurrency (default 1, 8, 32), one text per request, each
   client thread with a kept-alive connection, --requests requests at each (at most --time-limit
   seconds each): throughput, latency p50/p95/p99, failed requests (anything but a 200 with one
   row, a connection error included), requests per inference batch (from ``/metrics``);
3. during the last level, once half of its requests have been sent, ``Registry.promote`` moves
   ``production`` of the first task to version 2 (no restart, no ``/reload``: the server's own
   --poll finds it). Every response carries the snapshot and each row's version; a response to a
   request *sent* 5 s or more after the promotion returned must come from a new snapshot, and its
   rows of the promoted task must say version 2.

With --tune, --max-batch, --max-wait-ms (and --batch-size) are first chosen on short runs at the
top concurrency, each against its own server, apart from the measured run.

Prints a table, then one PASS/MISS line per target of issue #14 (0 failed over >= 2,000 requests
at the top concurrency with the promotion in the middle; every response after promotion + 5 s on
the new version; throughput at the top concurrency >= 0.7x batch) and exits 1 on any MISS. The
JSON of every figure goes to stdout (and --json FILE). Client threads share the machine's cores
with the server: on a 2-core machine they cost the server part of its CPU.
"""

from __future__ import annotations

import argparse
import copy
import csv
import http.client
import itertools
import json
import os
import random
import re
import signal
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


def build_registry(lb, workdir: Path, n_tasks: int) -> tuple[object, list[str], str]:
    """A registry with ``n_tasks`` adapters (the first with versions 1 and 2, production on 1) and a
    router; returns it, mixed test texts and the two-version task."""
    from adaptreg.compose.router import Router, entry_name, register_router
    from adaptreg.data.tasks import load_task
    from adaptreg.registry import Registry

    reg = Registry(str(workdir / "reg"))
    router = Router(max_length=128)
    feats, ys, tests = {}, {}, []
    names = list(VOCAB)[:n_tasks]
    for i, task in enumerate(names):
        path = workdir / f"{task}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(synthetic_rows(task, 60, 2 + i % 2, seed=i))
        td = load_task(str(path))
        x = router.features(lb, td.train.texts)
        reg.register(make_adapter(lb, task, td, workdir / "adapters" / task, seed=i))
        feats[entry_name(task, 1)], ys[entry_name(task, 1)] = x, td.train.y
        if i == 0:  # a second version of the first task, to promote while the server runs, trained on new
            # rows of the same task: a router entry fitted on the very rows of another entry (v1's) gets a
            # held-out calibration that is not held out, and abstains on most of its task's texts
            path2 = workdir / f"{task}-v2.csv"
            with open(path2, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=["text", "label"])
                w.writeheader()
                w.writerows(synthetic_rows(task, 60, 2 + i % 2, seed=100))
            td2 = load_task(str(path2))
            reg.register(make_adapter(lb, task, td2, workdir / "adapters" / f"{task}-v2", seed=100))
            feats[entry_name(task, 2)], ys[entry_name(task, 2)] = router.features(lb, td2.train.texts), td2.train.y
        tests += td.test.texts
    router.fit(feats, ys)
    register_router(reg, router)
    reg.promote(names[0], 1, "production")  # also imports what promote needs here, before any timing
    random.Random(0).shuffle(tests)
    return reg, tests, names[0]


# --------------------------------------------------------------------------- the server and its load

def start_server(args, registry: Path, max_batch: int, log: Path,
                 max_wait_ms: float | None = None) -> tuple[subprocess.Popen, str]:
    wait = args.max_wait_ms if max_wait_ms is None else max_wait_ms
    cmd = [sys.executable, "-c", "from adaptreg.cli import run; run()", "serve", "--registry", str(registry),
           "--base", args.base, "--port", "0", "--poll", str(args.poll), "--max-batch", str(max_batch),
           "--max-wait-ms", str(wait), "--batch-size", str(args.batch_size)]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"the server did not start:\n{log.read_text()}")
    return proc, url


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGTERM (graceful: requests in flight finish); the exit status, or None if it had to be killed."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def _get(url: str, path: str) -> str:
    host = urlparse(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def batch_counters(url: str) -> tuple[float, float, float, float]:
    """(inference batches, requests in them, rows in them, seconds of inference) so far, from /metrics."""
    text = _get(url, "/metrics")

    def value(name: str) -> float:
        m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    return (value("adaptreg_batch_requests_count"), value("adaptreg_batch_requests_sum"),
            value("adaptreg_batch_rows_sum"), value("adaptreg_inference_seconds_sum"))


def run_level(url: str, texts: list[str], clients: int, n_requests: int, time_limit_s: float,
              halfway: threading.Event | None = None) -> list[dict]:
    """``n_requests`` requests of one text each from ``clients`` threads (no new one after
    ``time_limit_s``); one record per request: send and answer times, status, snapshot, rows."""
    host = urlparse(url)
    lock = threading.Lock()
    sent = [0]
    records: list[dict] = []
    stop_at = time.monotonic() + time_limit_s

    def worker() -> None:
        conn = None
        while True:
            with lock:
                i = sent[0]
                if i >= n_requests or time.monotonic() > stop_at:
                    break
                sent[0] += 1
            if halfway is not None and i == n_requests // 2:
                halfway.set()
            if conn is None:
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
            body = json.dumps({"texts": [texts[i % len(texts)]]})
            rec = {"i": i, "sent": time.monotonic(), "status": None, "snapshot": None, "rows": None, "error": None}
            try:
                conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
                res = conn.getresponse()
                data = res.read()
                rec["status"] = res.status
                if res.status == 200:
                    out = json.loads(data)
                    rec["snapshot"] = out["snapshot"]
                    rec["rows"] = [(r["task"], r["version"]) for r in out["predictions"]]
                    if len(rec["rows"]) != 1:
                        rec["error"] = f"{len(rec['rows'])} rows for 1 text"
                else:
                    rec["error"] = f"HTTP {res.status}: {data[:200]!r}"
            except Exception as exc:  # noqa: BLE001 - counted as a failed request
                rec["error"] = repr(exc)
                conn.close()
                conn = None
            rec["answered"] = time.monotonic()
            with lock:
                records.append(rec)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, name=f"client-{k}") for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return records


def summarize(records: list[dict], wall_s: float, batch_rps: float, counters: tuple) -> dict:
    ok = [r for r in records if r["error"] is None]
    lat = sorted(1000 * (r["answered"] - r["sent"]) for r in ok)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    rps = len(ok) / wall_s if wall_s > 0 else 0.0
    batches, reqs, rows, busy = counters
    errors: dict[str, int] = {}
    for r in records:
        if r["error"] is not None:
            errors[r["error"][:120]] = errors.get(r["error"][:120], 0) + 1
    t0 = min((r["sent"] for r in records), default=0.0)
    per_s = [0] * (int(wall_s) + 1)
    for r in ok:
        per_s[min(int(r["answered"] - t0), len(per_s) - 1)] += 1
    return {"requests": len(records), "failed": len(records) - len(ok), "errors": errors, "wall_s": wall_s,
            "answers_per_second": per_s,
            "rows_per_s": rps, "over_batch": rps / batch_rps,
            "latency_ms": {"p50": q[49], "p95": q[94], "p99": q[98], "max": lat[-1] if lat else None},
            "inference_batches": batches, "requests_per_batch": reqs / batches if batches else None,
            "rows_per_batch": rows / batches if batches else None,
            # the inference thread's busy share of the wall time, and its own rows/s while busy: the
            # rest of the time goes to HTTP, the clients and the batcher's turnarounds
            "inference_busy_share": busy / wall_s if wall_s > 0 and busy else None,
            "rows_per_inference_s": rows / busy if busy else None}


def swap_check(records: list[dict], task: str, new_version: int, old_snapshot: int, t_promoted: float,
               grace_s: float = 5.0) -> dict:
    """Did every response to a request sent ``grace_s`` after the promotion come from the new version?"""
    ok = [r for r in records if r["error"] is None]
    after = [r for r in ok if r["sent"] >= t_promoted + grace_s]
    stale = [r for r in after if r["snapshot"] == old_snapshot
             or any(t == task and v != new_version for t, v in r["rows"])]
    seen: dict[str, int] = {}
    for r in after:
        for t, v in r["rows"]:
            seen[f"{t}@{v}"] = seen.get(f"{t}@{v}", 0) + 1
    new = [r for r in ok if r["snapshot"] != old_snapshot]
    old = [r for r in ok if r["snapshot"] == old_snapshot]
    answers = sorted(r["answered"] for r in ok)
    gap, gap_at = max(((b - a, a) for a, b in itertools.pairwise(answers)), default=(0.0, t_promoted))
    return {
        "task": task, "new_version": new_version, "grace_s": grace_s,
        "requests_sent_before": sum(r["sent"] < t_promoted for r in records),
        "requests_sent_after_grace": len(after),
        "rows_of_task_after_grace": sum(t == task for r in after for t, _ in r["rows"]),
        "stale_after_grace": len(stale), "rows_after_grace": dict(sorted(seen.items())),
        "first_new_answer_s": min(r["answered"] for r in new) - t_promoted if new else None,
        "last_old_request_sent_s": max(r["sent"] for r in old) - t_promoted if old else None,
        "new_snapshots": sorted({r["snapshot"] for r in new}),
        "longest_gap_between_answers_s": gap, "longest_gap_starts_s": gap_at - t_promoted,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--tasks", type=int, default=4, help=f"adapters in the registry (at most {len(VOCAB)})")
    ap.add_argument("--rows", type=int, default=512, help="distinct texts (the batch reference; requests cycle over them)")
    ap.add_argument("--concurrency", default="1,8,32", help="client threads per level, the promotion in the last")
    ap.add_argument("--requests", default="200,800,2400", help="requests per level (one text each)")
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds per level before no new request is sent")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=32, help="the server's --batch-size")
    ap.add_argument("--poll", type=float, default=2.0, help="the server's --poll")
    ap.add_argument("--rounds", type=int, default=2, help="batch reference: calls per measurement, the fastest counts")
    ap.add_argument("--warmup", type=int, default=64, help="requests at concurrency 8 before measuring")
    ap.add_argument("--tune", default=None, metavar="MB:MS[:BS],...",
                    help="first try these --max-batch:--max-wait-ms[:--batch-size] settings at the top concurrency, "
                         "each on its own server, and measure with the fastest (e.g. 64:5,32:0,32:30,32:30:8)")
    ap.add_argument("--tune-requests", type=int, default=400, help="requests per --tune setting")
    ap.add_argument("--unbatched", type=int, default=0,
                    help="then this many requests at the top concurrency against a --max-batch 1 server (0: skip)")
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    counts = [int(n) for n in args.requests.split(",")]
    if len(levels) != len(counts) or min(levels) < 1 or min(counts) < 2:
        ap.error("--concurrency and --requests need as many positive entries each (requests >= 2)")
    if not 1 <= args.tasks <= len(VOCAB):
        ap.error(f"--tasks must be in 1..{len(VOCAB)}")
    tune = []
    for item in filter(None, (args.tune or "").split(",")):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            ap.error(f"--tune {item!r}: write MAX_BATCH:MAX_WAIT_MS or MAX_BATCH:MAX_WAIT_MS:BATCH_SIZE")
        tune.append((int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else args.batch_size))

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="adaptreg-bench-serve-")
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()  # other work on the machine (1-, 5-, 15-minute averages)
    try:
        lb = load_base(args.base)
        t = time.perf_counter()
        reg, tests, promoted = build_registry(lb, workdir, args.tasks)
        print(f"registry: {args.tasks} adapters ({promoted} with 2 versions, production on 1) and a router, "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows = (tests * (args.rows // max(len(tests), 1) + 1))[: args.rows]

        # optional: settings chosen on short runs at the top concurrency, each against its own server, apart
        # from the measured run
        tuning = []
        for mb, mw, bs in tune:
            args.batch_size = bs
            proc, url = start_server(args, workdir / "reg", mb, workdir / "serve-tune.log", mw)
            try:
                run_level(url, rows, 8, args.warmup, args.time_limit)
                t0 = time.monotonic()
                recs = run_level(url, rows, levels[-1], args.tune_requests, args.time_limit)
                wall = time.monotonic() - t0
            finally:
                stop_server(proc)
            res = summarize(recs, wall, 1.0, (0.0, 0.0, 0.0, 0.0))
            tuning.append({"max_batch": mb, "max_wait_ms": mw, "batch_size": bs, "rows_per_s": res["rows_per_s"],
                           "failed": res["failed"], "latency_ms": res["latency_ms"]})
            print(f"tune --max-batch {mb} --max-wait-ms {mw:g} --batch-size {bs}: {res['rows_per_s']:.1f} rows/s "
                  f"at concurrency {levels[-1]}", file=sys.stderr)
        if tuning:
            best = max(tuning, key=lambda r: r["rows_per_s"] if r["failed"] == 0 else -1.0)
            args.max_batch, args.max_wait_ms, args.batch_size = best["max_batch"], best["max_wait_ms"], best["batch_size"]
        print(f"measuring with --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g} "
              f"--batch-size {args.batch_size}", file=sys.stderr)

        # the reference: one in-process Predictor.predict(rows) call, what `adaptreg predict --data` does, at
        # its default batch size (32) and at the server's; measured while the server is idle just before the
        # top level and again just after it, the fastest call of all counts (other work on this shared
        # machine during one of them cannot flatter the server)
        ref_sizes = sorted({32, args.batch_size})

        def batch_calls() -> dict[str, list[float]]:
            pred = Predictor(reg, base=lb)
            pred.predict(rows[:64])  # fold every branch, warm the allocator
            times: dict[str, list[float]] = {}
            for bs in ref_sizes:
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    pred.predict(rows, batch_size=bs)
                    times.setdefault(str(bs), []).append(time.perf_counter() - t)
            return times

        proc, url = start_server(args, workdir / "reg", args.max_batch, workdir / "serve.log")
        results: dict[str, dict] = {}
        batch: dict = {"rows": len(rows), "batch_sizes": ref_sizes}
        try:
            run_level(url, rows, 8, args.warmup, args.time_limit)
            old_snapshot = json.loads(_get(url, "/healthz"))["snapshot"]
            for k, (clients, n) in enumerate(zip(levels, counts)):
                last = k == len(levels) - 1
                halfway, promo = threading.Event(), {}
                if last:
                    batch["before_s"] = batch_calls()
                    print(f"batch (in process): {len(rows) / min(min(v) for v in batch['before_s'].values()):.1f} "
                          "rows/s", file=sys.stderr)

                def promote(halfway: threading.Event = halfway, promo: dict = promo) -> None:
                    if not halfway.wait(timeout=args.time_limit + 60):
                        return
                    promo["start"] = time.monotonic()
                    reg.promote(promoted, 2, "production")
                    promo["done"] = time.monotonic()

                promoter = threading.Thread(target=promote, name="promoter") if last else None
                if promoter is not None:
                    promoter.start()
                before = batch_counters(url)
                cpu0 = (time.process_time(), _cpu_seconds(proc.pid))
                t0 = time.monotonic()
                records = run_level(url, rows, clients, n, args.time_limit, halfway if last else None)
                wall = time.monotonic() - t0
                cpu1 = (time.process_time(), _cpu_seconds(proc.pid))
                after = batch_counters(url)
                halfway.set()
                if promoter is not None:
                    promoter.join()
                res = summarize(records, wall, 1.0, tuple(a - b for a, b in zip(after, before)))
                res["clients"] = clients
                # cores each process kept busy on average: the clients share the machine with the server
                res["cores_busy"] = {"clients": (cpu1[0] - cpu0[0]) / wall,
                                     "server": (cpu1[1] - cpu0[1]) / wall if cpu0[1] is not None else None}
                if last and "done" in promo:
                    res["promotion"] = {"at_s": promo["start"] - t0, "took_s": promo["done"] - promo["start"],
                                        **swap_check(records, promoted, 2, old_snapshot, promo["done"])}
                results[f"c{clients}"] = res
                lat = res["latency_ms"]
                busy = res["cores_busy"]
                print(f"c{clients}: {res['requests']} requests, {res['failed']} failed, {res['rows_per_s']:.1f} rows/s, "
                      f"p50/p95/p99 {lat['p50']:.0f}/{lat['p95']:.0f}/{lat['p99']:.0f} ms; cores busy: server "
                      f"{busy['server'] if busy['server'] is not None else float('nan'):.2f}, clients {busy['clients']:.2f}",
                      file=sys.stderr)
            batch["after_s"] = batch_calls()
            health = json.loads(_get(url, "/healthz"))
        finally:
            rc = stop_server(proc)
        serve_log = (workdir / "serve.log").read_text()
        best_s = min(x for d in (batch["before_s"], batch["after_s"]) for v in d.values() for x in v)
        batch["rows_per_s"] = len(rows) / best_s
        print(f"batch (in process) after the top level: "
              f"{len(rows) / min(min(v) for v in batch['after_s'].values()):.1f} rows/s; reference "
              f"{batch['rows_per_s']:.1f} rows/s", file=sys.stderr)
        for res in results.values():
            res["over_batch"] = res["rows_per_s"] / batch["rows_per_s"]
        out = {"base": lb.id, "tasks": args.tasks, "rows": len(rows), "max_batch": args.max_batch,
               "max_wait_ms": args.max_wait_ms, "batch_size": args.batch_size, "poll_s": args.poll, "tuning": tuning,
               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_average_at_start_and_end": [load_start, os.getloadavg()], "batch": batch,
               "serve": results, "served_after": health["versions"], "server_exit_status": rc,
               "server_tracebacks": serve_log.count("Traceback")}

        if args.unbatched:
            top = levels[-1]
            proc, url = start_server(args, workdir / "reg", 1, workdir / "serve-unbatched.log")
            try:
                run_level(url, rows, 8, args.warmup, args.time_limit)
                before = batch_counters(url)
                t0 = time.monotonic()
                records = run_level(url, rows, top, args.unbatched, args.time_limit)
                wall = time.monotonic() - t0
                after = batch_counters(url)
            finally:
                stop_server(proc)
            out["unbatched"] = {"clients": top, **summarize(records, wall, batch["rows_per_s"],
                                                            tuple(a - b for a, b in zip(after, before)))}

        # the targets
        top = results[f"c{levels[-1]}"]
        promo = top.get("promotion") or {}
        first_new = promo.get("first_new_answer_s")
        checks = [
            (f"0 failed requests over >= 2,000 at concurrency {levels[-1]} with a promotion in the middle",
             top["requests"] >= 2000 and top["failed"] == 0 and bool(promo),
             f"{top['failed']} failed of {top['requests']}"),
            ("every response to a request sent >= 5 s after the promotion reports the new version",
             bool(promo) and promo["stale_after_grace"] == 0 and promo["rows_of_task_after_grace"] > 0,
             (f"{promo['stale_after_grace']} stale of {promo['requests_sent_after_grace']} requests "
              f"({promo['rows_of_task_after_grace']} rows of {promoted}); new version first answered "
              f"{first_new if first_new is not None else float('nan'):.2f} s after the promotion")
             if promo else "no promotion"),
            (f"throughput at concurrency {levels[-1]} >= 0.7x in-process batch",
             top["over_batch"] >= 0.7,
             f"{top['rows_per_s']:.1f} / {batch['rows_per_s']:.1f} rows/s = {top['over_batch']:.2f}x"),
        ]
        out["targets"] = [{"target": name, "pass": ok, "measured": what} for name, ok, what in checks]
        out["total_s"] = time.perf_counter() - t_start
        print_table(out, levels)
        for name, ok, what in checks:
            print(f"{'PASS' if ok else 'MISS'}  {name}: {what}", file=sys.stderr)
        emit(out, args.json_out)
        if not all(ok for _, ok, _ in checks):
            sys.exit(1)
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


def print_table(out: dict, levels: list[int]) -> None:
    b = out["batch"]
    lines = ["| | requests | failed | rows/s | vs. batch | latency p50 / p95 / p99 | requests per batch |",
             "|---|---|---|---|---|---|---|",
             f"| `Predictor.predict(rows)`, one call in process | {b['rows']} rows | | {b['rows_per_s']:.1f} | 1.00 | | |"]
    runs = [(f"serve, concurrency {c}", out["serve"][f"c{c}"]) for c in levels]
    if "unbatched" in out:
        runs.append((f"serve --max-batch 1, concurrency {out['unbatched']['clients']}", out["unbatched"]))
    for name, r in runs:
        lat = r["latency_ms"]
        rpb = f"{r['requests_per_batch']:.1f}" if r["requests_per_batch"] else ""
        lines.append(f"| {name} | {r['requests']} | {r['failed']} | {r['rows_per_s']:.1f} | {r['over_batch']:.2f} | "
                     f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} ms | {rpb} |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
