"""``adaptreg serve``: the HTTP API, micro-batching, hot swap, the adapter cache, the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient  # needs httpx (the dev extra)
from test_predict import MAX_LEN, _mixed, fresh_registry, make_adapter, world  # noqa: F401 - world is a fixture

from adaptreg.cli import main
from adaptreg.compose.predict import Predictor
from adaptreg.compose.router import UNKNOWN, Router
from adaptreg.serve import ServeSettings
from adaptreg.serve.app import create_app
from adaptreg.serve.cache import BranchCache

# --------------------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def served(world, tmp_path_factory):  # noqa: F811
    """A registry: topic v1 and v2 (latest), senti v1, alias canary on topic v1, a router with all three."""
    from adaptreg.compose.router import add_task_to_registry_router

    d = tmp_path_factory.mktemp("serve")
    reg = fresh_registry(d / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    reg.register(make_adapter(world["lb"], "topic", world["tds"]["topic"], d / "topic-v2", seed=7))
    reg.promote("topic", 1, "canary")
    add_task_to_registry_router(reg, "topic", world["lb"], new_router=Router(max_length=MAX_LEN))  # topic@2
    add_task_to_registry_router(reg, "senti", world["lb"])
    add_task_to_registry_router(reg, "topic", world["lb"], version=1)
    tasks, texts = _mixed(world, 5)
    return {"dir": d / "reg", "reg": reg, "lb": world["lb"], "tasks": tasks, "texts": texts}


def registry_copy(served, tmp_path):
    """A private copy of the served registry (a registry folder works wherever it is copied)."""
    from adaptreg.registry import Registry

    shutil.copytree(served["dir"], tmp_path / "reg")
    return Registry(str(tmp_path / "reg"))


def make_client(served, reg=None, **kw):
    settings = ServeSettings(registry=str(reg.location.display if reg else served["dir"]), **{"poll_s": 0, **kw})
    return TestClient(create_app(settings, registry=reg or served["reg"], base=served["lb"]))


def assert_rows_equal(got, expect, version_of):
    assert [r["text"] for r in got] == [r["text"] for r in expect]
    for g, e in zip(got, expect):
        assert (g["task"], g["label"]) == (e["task"], e["label"])
        assert g["version"] == version_of.get(g["task"])
        for k in ("confidence", "route_score"):
            assert (g[k] is None) == (e[k] is None) and (g[k] is None or abs(g[k] - e[k]) < 1e-4), k


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)((?:\{[^}]*\})?) (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, tuple], float]:
    """Samples of a Prometheus text exposition; fails on any line the format does not allow."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in types
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name, labels, value = m.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert base in types, f"{name} has no TYPE line before it"
        pairs = tuple(_LABEL.findall(labels))
        assert labels == "" or labels == "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}", line
        samples[(name, pairs)] = float(value)  # float() reads +Inf too
    for name, kind in types.items():  # histogram buckets are cumulative and end at +Inf == _count
        if kind == "histogram":
            for (n, labels), v in samples.items():
                if n == name + "_count":
                    rest = tuple(p for p in labels)
                    buckets = sorted((float(dict(lb)["le"]), c) for (bn, lb), c in samples.items()
                                     if bn == name + "_bucket" and tuple(p for p in lb if p[0] != "le") == rest)
                    assert [c for _, c in buckets] == sorted(c for _, c in buckets) and buckets[-1] == (math.inf, v)
    return samples


def metric(samples, name, **labels) -> float:
    return samples.get((name, tuple(labels.items())), 0.0)


# --------------------------------------------------------------------------- the API in process

def test_predict_answers_like_the_predictor_with_versions(served):
    lb, texts = served["lb"], served["texts"]
    default = Predictor(served["reg"], base=lb)  # topic@2 (latest), senti@1
    canary = Predictor(served["reg"], base=lb, alias="canary")  # topic@1
    with make_client(served) as client:
        res = client.post("/predict", json={"texts": texts + ["", "0 1 2 3 4 5 6 7 8 9"]})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["alias"] == "production" and body["router_version"] == 3
        assert_rows_equal(body["predictions"], default.predict(texts + ["", "0 1 2 3 4 5 6 7 8 9"]),
                          {"topic": 2, "senti": 1})
        assert body["predictions"][-2]["task"] == UNKNOWN and body["predictions"][-2]["version"] is None
        assert {"topic", "senti"} <= {r["task"] for r in body["predictions"][:-2]}
        # a task for every row: no routing
        res = client.post("/predict", json={"texts": texts[:4], "task": "senti"})
        assert_rows_equal(res.json()["predictions"], default.predict(texts[:4], task="senti"), {"senti": 1})
        # another alias: that alias's version where the task has it, else the task's latest
        res = client.post("/predict", json={"texts": texts, "alias": "canary"})
        assert res.status_code == 200, res.text
        assert res.json()["alias"] == "canary"
        assert_rows_equal(res.json()["predictions"], canary.predict(texts), {"topic": 1, "senti": 1})
        # the request's threshold reaches the router
        res = client.post("/predict", json={"texts": texts[:3], "threshold": 1e-6})
        assert [r["task"] for r in res.json()["predictions"]] == [UNKNOWN] * 3
        assert client.app.state.manager.current("canary").versions == {"topic": 1, "senti": 1}


def test_bf16_setting_reaches_the_served_predictor(served):
    """ServeSettings(bf16=True) serves with the layers under bf16 autocast: same tasks as the
    float32 predictor, labels all but unchanged."""
    lb, texts = served["lb"], served["texts"]
    want = Predictor(served["reg"], base=lb).predict(texts)
    with make_client(served, bf16=True) as client:
        assert client.app.state.manager.current().predictor.bf16
        res = client.post("/predict", json={"texts": texts})
        assert res.status_code == 200, res.text
        got = res.json()["predictions"]
    assert [r["task"] for r in got] == [r["task"] for r in want]
    assert sum(g["label"] == w["label"] for g, w in zip(got, want)) >= 0.9 * len(want)


def test_bad_requests_get_one_line_json_errors(served):
    cases = [
        ({"texts": []}, 422, "texts is empty"),
        ({"texts": ["a"] * 6}, 422, "limit of 5"),
        ({"texts": ["a", 3]}, 422, "texts.1"),
        ({"texts": "a text"}, 422, "texts"),
        ({"text": ["a"]}, 422, "texts is missing"),
        ({"texts": ["a"], "colour": 1}, 422, "unknown field 'colour'"),
        ({"texts": ["a"], "threshold": -1}, 422, "threshold"),
        ({"texts": ["a"], "threshold": 0}, 422, "threshold"),
        ({"texts": ["a"], "task": "nope"}, 404, "task 'nope' is not served (tasks: senti, topic)"),
        ({"texts": ["a"], "task": UNKNOWN}, 404, "not served"),
        ({"texts": ["a"], "alias": "nightly"}, 404, "no served task has alias 'nightly' (aliases: canary)"),
        ({"texts": ["a"], "alias": "v2"}, 422, "invalid alias"),
        ([1, 2], 422, "JSON object"),
        ("texts", 422, "JSON object"),
        ({"texts": None}, 422, "texts"),
        ({"texts": [["a"]]}, 422, "texts.0"),
        ({"texts": ["a"], "task": 3}, 422, "task"),
        ({"texts": ["a"], "alias": ["production"]}, 422, "alias"),
        ({"texts": ["a"], "threshold": "high"}, 422, "threshold"),
        ({"texts": ["a", "x" * 41]}, 422, "texts.1 has 41 characters, more than the limit of 40 per text (--max-chars)"),
    ]
    with make_client(served, max_texts=5, max_chars=40) as client:
        for body, status, needle in cases:
            res = client.post("/predict", json=body)
            assert res.status_code == status, (body, res.text)
            assert list(res.json()) == ["error"] and needle in res.json()["error"], (body, res.text)
            assert "\n" not in res.json()["error"]
        raw = [(b'{"texts": ["a"], "threshold": NaN}', "threshold"), (b'{"texts": ["a"], "threshold": Infinity}', "threshold"),
               (b'{"texts": [', "not valid JSON"), (b"", "the request body is empty")]
        for data, needle in raw:
            res = client.post("/predict", content=data, headers={"content-type": "application/json"})
            assert res.status_code == 422 and needle in res.json()["error"], (data, res.text)
        res = client.get("/nope")
        assert res.status_code == 404 and list(res.json()) == ["error"]
        res = client.get("/predict")
        assert res.status_code == 405 and list(res.json()) == ["error"]
        # the worker survived every one of them; a text of exactly --max-chars is accepted
        res = client.post("/predict", json={"texts": ["x" * 40, "a"], "task": "senti"})
        assert res.status_code == 200 and len(res.json()["predictions"]) == 2, res.text
    with make_client(served, max_body_mb=0.001) as client:
        res = client.post("/predict", json={"texts": ["x" * 2000]})
        assert res.status_code == 413 and "--max-body-mb" in res.json()["error"]


def test_tasks_healthz_and_prometheus_metrics(served):
    with make_client(served) as client:
        res = client.get("/tasks")
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["router_version"] == 3 and body["alias"] == "production"
        rows = {r["task"]: r for r in body["tasks"]}
        assert set(rows) == {"topic", "senti"}
        assert rows["topic"]["versions"] == [2, 1] and rows["topic"]["served_version"] == 2
        assert rows["topic"]["aliases"] == {"canary": 1} and rows["topic"]["metrics"] == {"test_accuracy": 0.5}
        assert rows["senti"]["labels"] == ["neg", "pos"] and rows["senti"]["routed"] is True
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["versions"] == {"topic": 2, "senti": 1}
        texts = served["texts"][:6] + [""]
        client.post("/predict", json={"texts": texts})
        client.post("/predict", json={"texts": ["a"], "task": "nope"})
        res = client.get("/metrics")
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = parse_prometheus(res.text)
        assert metric(samples, "adaptreg_http_requests_total", endpoint="/predict", code="200") == 1
        assert metric(samples, "adaptreg_http_requests_total", endpoint="/predict", code="404") == 1
        assert metric(samples, "adaptreg_http_requests_total", endpoint="/tasks", code="200") == 1
        per_task = {dict(lb)["task"]: v for (n, lb), v in samples.items() if n == "adaptreg_predict_rows_total"}
        assert sum(per_task.values()) == len(texts) and per_task[UNKNOWN] >= 1
        assert metric(samples, "adaptreg_predict_latency_seconds_count") == 1
        assert metric(samples, "adaptreg_batch_rows_sum") == len(texts)
        assert metric(samples, "adaptreg_served_version", alias="production", task="topic") == 2
        assert metric(samples, "adaptreg_router_version", alias="production") == 3
        assert metric(samples, "adaptreg_adapter_cache_entries") == 2  # topic@2 and senti@1 folded at start


def test_hot_swap_keeps_requests_in_flight_on_their_snapshot(served, tmp_path):
    """A request being computed and one still queued when the swap lands answer with the old
    version; one sent after it, in the same batch, with the new one."""
    reg = registry_copy(served, tmp_path)
    texts = served["texts"][:3]
    with make_client(served, reg=reg, max_wait_ms=0) as client:
        manager, batcher = client.app.state.manager, client.app.state.batcher
        old = manager.current()
        entered, release = threading.Event(), threading.Event()
        real_predict = old.predictor.predict

        def gated(*a, **kw):
            entered.set()
            assert release.wait(30)
            return real_predict(*a, **kw)

        old.predictor.predict = gated
        answers: dict[str, dict] = {}

        def send(name):
            answers[name] = client.post("/predict", json={"texts": texts, "task": "topic"}).json()

        pool = ThreadPoolExecutor(3)
        pool.submit(send, "computing")
        assert entered.wait(30)
        pool.submit(send, "queued")
        deadline = time.monotonic() + 30
        while batcher._pending_rows < len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
        reg.promote("topic", 1)  # production -> topic@1
        assert [(o.id, n.id) for o, n in manager.refresh()] == [(old.id, old.id + 1)]
        assert manager.current().versions == {"topic": 1, "senti": 1}
        pool.submit(send, "after")
        while batcher._pending_rows < 2 * len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        pool.shutdown(wait=True)
        assert {k: {r["version"] for r in v["predictions"]} for k, v in answers.items()} == \
            {"computing": {2}, "queued": {2}, "after": {1}}
        assert answers["queued"]["snapshot"] == old.id and answers["after"]["snapshot"] == old.id + 1
        expect = Predictor.from_artifacts(served["lb"], {"topic": reg.lookup("topic", version=1)["path"]})
        assert_rows_equal(answers["after"]["predictions"], expect.predict(texts, task="topic"), {"topic": 1})
        assert manager.refresh() == []  # nothing changed since: no rebuild
        # archiving the served version moves back to the latest ready one
        reg.archive("topic", 1)
        manager.refresh()
        assert client.post("/predict", json={"texts": texts, "task": "topic"}).json()["predictions"][0]["version"] == 2
        samples = parse_prometheus(client.get("/metrics").text)
        assert metric(samples, "adaptreg_snapshot_swaps_total") == 2


def test_adapter_cache_is_bounded_and_evicts_least_recent(served):
    cache = BranchCache(2)
    for k in "abc":
        cache[k] = [k]
    assert list(cache) == ["b", "c"] and cache.get("b") == ["b"] and cache.get("a") is None
    cache["d"] = ["d"]
    assert list(cache) == ["b", "d"] and cache.stats()["evictions"] == 2
    texts = served["texts"][:4]
    with make_client(served, max_adapters=1) as client:
        first = client.post("/predict", json={"texts": texts, "task": "topic"}).json()["predictions"]
        client.post("/predict", json={"texts": texts, "task": "senti"})
        again = client.post("/predict", json={"texts": texts, "task": "topic"}).json()["predictions"]
        st = client.app.state.manager.cache.stats()
        assert st["size"] == 1 and st["evictions"] >= 2
        assert [(r["label"], round(r["confidence"], 5)) for r in again] == \
            [(r["label"], round(r["confidence"], 5)) for r in first]


def test_pinned_production_branches_survive_other_aliases(served, tmp_path):
    """--max-adapters 2 with production serving 2 branches: a canary request folds topic@1, which
    is evicted at once rather than a production branch; pinned ones alone over the limit go LRU."""
    cache = BranchCache(3)
    cache.pin({"p1", "p2"})
    for k in ("p1", "a", "p2", "b", "c"):
        cache[k] = [k]
    assert list(cache) == ["p1", "p2", "c"] and cache.stats()["pinned_loaded"] == 2
    cache.pin({"p1", "p2", "c", "d"})  # every entry pinned and one more: the least recently used pinned goes
    cache["d"] = ["d"]
    assert list(cache) == ["p2", "c", "d"] and len(cache) == cache.max_items
    texts = served["texts"][:4]
    reg = registry_copy(served, tmp_path)
    with make_client(served, reg=reg, max_adapters=2) as client:
        manager = client.app.state.manager
        production = set(cache_keys(manager.current()))
        assert len(production) == 2 and manager.cache.pinned == production and set(manager.cache) == production
        res = client.post("/predict", json={"texts": texts, "task": "topic", "alias": "canary"})
        assert res.status_code == 200 and {r["version"] for r in res.json()["predictions"]} == {1}
        assert set(manager.cache) == production  # topic@1 was folded, used and dropped
        res = client.post("/predict", json={"texts": texts, "task": "topic"})
        assert {r["version"] for r in res.json()["predictions"]} == {2}
        health = client.get("/healthz").json()["adapter_cache"]
        assert health["pinned"] == 2 and health["pinned_loaded"] == 2 and health["size"] == 2
        # a promotion moves the pins: the new production branch is folded at the swap and stays
        reg.promote("topic", 1)
        manager.refresh()
        assert manager.cache.pinned == set(manager.cache) == cache_keys(manager.current()) != production


def cache_keys(snap):
    from adaptreg.serve.snapshot import branch_keys

    return branch_keys(snap.predictor)


def test_reload_checks_the_registry_now_and_retries_a_failed_build(served, tmp_path):
    reg = registry_copy(served, tmp_path)
    texts = served["texts"][:3]
    with make_client(served, reg=reg) as client:  # --poll 0: only /reload sees registry changes
        manager = client.app.state.manager
        first = manager.current().id
        res = client.post("/reload")
        assert res.status_code == 200 and res.json() == {
            "status": "ok", "changed": [], "errors": [],
            "served": {"production": {"snapshot": first, "versions": {"topic": 2, "senti": 1}, "router_version": 3}}}
        reg.promote("topic", 1)
        assert client.post("/predict", json={"texts": texts, "task": "topic"}).json()["predictions"][0]["version"] == 2
        body = client.post("/reload").json()
        assert body["status"] == "ok" and body["changed"] == [
            {"alias": "production", "snapshot": [first, first + 1], "versions": {"topic": [2, 1]}, "router_version": [3, 3]}]
        assert client.post("/predict", json={"texts": texts, "task": "topic"}).json()["predictions"][0]["version"] == 1
        assert manager.cache.pinned == cache_keys(manager.current())  # the pins follow production
        # a build that fails (a tampered file) keeps the old snapshot; /reload retries it once the file is back
        from pathlib import Path

        weights = min(Path(reg.lookup("topic", version=2)["path"]).rglob("*.safetensors"))
        good = weights.read_bytes()
        weights.write_bytes(good[:-8] + b"tampered")
        reg.promote("topic", 2)
        body = client.post("/reload").json()
        assert body["status"] == "degraded" and body["changed"] == [] and body["errors"][0]["alias"] == "production"
        assert body["served"]["production"]["versions"] == {"topic": 1, "senti": 1}
        assert manager.refresh() == []  # the watcher does not retry the same registry state
        weights.write_bytes(good)
        body = client.post("/reload").json()
        assert body["status"] == "ok" and body["changed"][0]["versions"] == {"topic": [1, 2]}
        assert client.get("/healthz").json()["status"] == "ok"


# --------------------------------------------------------------------------- a real server

def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _post(url: str, body: dict, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def test_cli_server_micro_batches_concurrent_requests_and_hot_swaps(served, tmp_path):
    """`adaptreg serve` in a subprocess on 127.0.0.1: 48 requests from 8 threads share batches and
    answer as the Predictor does; a promote is served within a few poll periods; Ctrl-C stops it."""
    reg = registry_copy(served, tmp_path)
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from adaptreg.cli import run; run()", "serve", "--registry", str(tmp_path / "reg"),
             "--base", str(served["lb"].id), "--port", "0", "--poll", "0.2", "--max-wait-ms", "20", "--max-batch", "64"],
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = proc.stdout.readline().strip()  # the first stdout line, once the model is loaded
        assert url.startswith("http://127.0.0.1:"), log.read_text()
        deadline = time.monotonic() + 60
        while _get_ok(url + "/healthz") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        texts, tasks = served["texts"], served["tasks"]
        jobs = [{"texts": texts[i % len(texts):][:3], "task": tasks[i % len(tasks)]} for i in range(48)]
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: _post(url + "/predict", b), jobs))
        assert time.monotonic() - t0 < 60
        pred = Predictor(reg, base=served["lb"])
        for job, ans in zip(jobs, answers):
            assert_rows_equal(ans["predictions"], pred.predict(job["texts"], task=job["task"]), {"topic": 2, "senti": 1})
        samples = parse_prometheus(_get(url + "/metrics")[1])
        batches = metric(samples, "adaptreg_batch_requests_count")
        assert metric(samples, "adaptreg_batch_requests_sum") == 48
        assert batches < 48 and metric(samples, "adaptreg_batch_requests_bucket", le="1") < batches  # shared batches
        assert metric(samples, "adaptreg_http_requests_total", endpoint="/predict", code="200") == 48

        reg.promote("topic", 1)
        deadline = time.monotonic() + 20
        version = None
        while version != 1 and time.monotonic() < deadline:
            version = _post(url + "/predict", {"texts": texts[:1], "task": "topic"})["predictions"][0]["version"]
            time.sleep(0.1)
        assert version == 1
        assert json.loads(_get(url + "/healthz")[1])["versions"] == {"topic": 1, "senti": 1}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def test_sigterm_drains_requests_in_flight_then_exits_0(served, tmp_path):
    """SIGTERM while 8 requests wait in the micro-batcher's queue: each is answered (200), then the
    process exits with status 0."""
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from adaptreg.cli import run; run()", "serve", "--registry", str(served["dir"]),
             "--base", str(served["lb"].id), "--port", "0", "--poll", "0", "--max-wait-ms", "4000", "--max-batch", "1024"],
            stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    pool = ThreadPoolExecutor(8)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), log.read_text()
        texts = served["texts"][:3]
        futures = [pool.submit(_post, url + "/predict", {"texts": texts, "task": "senti"}) for _ in range(8)]
        deadline = time.monotonic() + 30
        queued = 0
        while queued < 24 and time.monotonic() < deadline:  # every request is in the server, waiting for its batch
            queued = json.loads(_get_ok(url + "/healthz") or '{"queue_rows": 0}')["queue_rows"]
            time.sleep(0.05)
        assert queued == 24 and not any(f.done() for f in futures), log.read_text()
        proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in futures]
        assert all(len(a["predictions"]) == 3 and a["predictions"][0]["version"] == 1 for a in answers)
        rc = proc.wait(timeout=30)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


def _get_ok(url: str):
    try:
        status, text = _get(url, timeout=2)
    except OSError:
        return None
    return text if status == 200 else None


# --------------------------------------------------------------------------- the command line

def test_cli_refuses_bad_settings_in_one_line(served, tmp_path, tmp_path_factory):
    runner = CliRunner()
    empty = fresh_registry(tmp_path / "empty", tmp_path_factory.getbasetemp())
    cases = [
        (["--registry", str(empty.location.display), "--port", "0"], "no tasks in the registry"),
        (["--registry", str(tmp_path / "nowhere"), "--port", "0"], "no tasks in the registry"),
        (["--host", "0.0.0.0", "--port", "0"], "--allow-remote"),
        (["--port", "70000"], "70000"),
        (["--max-batch", "0"], "--max-batch"),
        (["--threshold", "nan", "--port", "0"], "--threshold nan"),
        (["--alias", "v1", "--port", "0"], "invalid alias"),
    ]
    for args, needle in cases:
        res = runner.invoke(main, ["serve", *args])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
    import socket

    with socket.socket() as s:  # a port in use: refused before any model is loaded
        s.bind(("127.0.0.1", 0))
        s.listen()
        res = runner.invoke(main, ["serve", "--registry", str(served["dir"]), "--port", str(s.getsockname()[1])])
    assert res.exit_code == 2 and "cannot listen on 127.0.0.1" in res.output and "--port" in res.output


def test_serve_command_imports_no_heavy_library():
    code = ("import sys, adaptreg.cli, adaptreg.cli.serve; "
            "heavy = [m for m in ('torch', 'mlflow', 'fastapi', 'uvicorn', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_serve_puts_numpys_blas_on_one_thread_once_numpy_is_loaded():
    """`adaptreg serve` limits numpy's BLAS to one thread. A limit reaches only libraries already
    loaded: it used to run before anything had imported numpy, and changed nothing."""
    code = ("import sys; from adaptreg.cli.serve import one_blas_thread; assert 'numpy' not in sys.modules; "
            "one_blas_thread(); from threadpoolctl import threadpool_info; "
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1]"
