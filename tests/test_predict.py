"""Predictor: mixed-task batches through one PEFT model, routing, registry resolution, CLI."""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adaptreg import artifact
from adaptreg.base import load_base
from adaptreg.cli import main
from adaptreg.compose.predict import Predictor
from adaptreg.compose.router import SURFACE_DIMS, UNKNOWN, Router
from adaptreg.data.tasks import load_task
from adaptreg.errors import IncompatibleBaseError, NotFoundError

MAX_LEN = 32


# --------------------------------------------------------------------------- helpers (also used by test_merge)

def sentiment_rows(n_per_class: int = 24, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    pos, neg = "good great love happy fine fun".split(), "bad awful hate sad boring terrible".split()
    filler = "film music star show actor band album movie".split()
    rows = [{"text": " ".join(rng.choice(w if rng.random() < 0.6 else filler) for _ in range(10)) + f" {i}", "label": lab}
            for lab, w in (("pos", pos), ("neg", neg)) for i in range(n_per_class)]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def make_adapter(lb, task: str, td, out: Path, *, rank: int = 4, seed: int = 0, targets=("query", "value"),
                 rslora: bool = False, dora: bool = False) -> Path:
    """A non-trivial adapter artifact without training: random LoRA A and B, random head (seconds)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=2.0 * rank, lora_dropout=0.0, target_modules=list(targets),
                     init_lora_weights=False, use_rslora=rslora, use_dora=dora)
    pm = get_peft_model(copy.deepcopy(lb.model), cfg)
    out.mkdir(parents=True, exist_ok=True)
    pm.save_pretrained(str(out), safe_serialization=True)
    artifact.save_head(out, torch.nn.Linear(lb.hidden_size, td.n_labels), td.labels)
    manifest = {
        "task": task, "adaptreg_version": "test",
        "base": {"id": lb.id, "fingerprint": lb.fingerprint, "model_type": lb.model_type, "hidden_size": lb.hidden_size},
        "data": td.summary(), "labels": td.labels,
        "adapter": {"kind": "dora" if dora else "lora", "rank": rank, "alpha": 2.0 * rank, "targets": list(targets),
                    "rslora": rslora, "init_from": None},
        "training": {"max_length": MAX_LEN, "seed": 0}, "metrics": {"test_accuracy": 0.5}, "parents": [],
    }
    artifact.write_files_checksums(out, manifest)
    return out


def fresh_registry(dest: Path, basetemp: Path):
    """A new empty registry; MLflow's table creation (seconds) happens once per session in a template."""
    from adaptreg.registry import Registry

    template = basetemp / "empty-registry-template"
    if not (template / "mlflow.db").is_file():
        Registry(str(template)).client  # noqa: B018 - creates the tables
    shutil.copytree(template, dest)
    return Registry(str(dest))


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def world(tiny_base, tmp_path_factory):
    """Tiny base, two tasks (topic: 3 classes, senti: 2 classes), one random adapter each, a fitted router."""
    from conftest import make_toy_rows

    d = tmp_path_factory.mktemp("predict")
    lb = load_base(str(tiny_base))
    data = {"topic": write_csv(d / "topic.csv", make_toy_rows(20)), "senti": write_csv(d / "senti.csv", sentiment_rows())}
    tds = {t: load_task(str(p)) for t, p in data.items()}
    ads = {t: make_adapter(lb, t, tds[t], d / "ad" / t, seed=i) for i, t in enumerate(tds)}
    router = Router(max_length=MAX_LEN)
    router.fit({t: router.features(lb, td.train.texts) for t, td in tds.items()},
                                            {t: td.train.y for t, td in tds.items()})
    return {"lb": lb, "data": data, "tds": tds, "ads": ads, "router": router, "dir": d}


@pytest.fixture(scope="module")
def predictor(world):
    return Predictor.from_artifacts(world["lb"], world["ads"], router=world["router"])


def _mixed(world, n: int = 8):
    rows = [(t, x) for t, td in world["tds"].items() for x in td.test.texts[:n]]
    random.Random(3).shuffle(rows)
    return [t for t, _ in rows], [x for _, x in rows]


# --------------------------------------------------------------------------- tests

def test_mixed_batch_equals_per_task_row_by_row(world, predictor):
    tasks, texts = _mixed(world)
    mixed = predictor.predict(texts, task=tasks, batch_size=5)  # length-sorted batches mix tasks
    assert [r["text"] for r in mixed] == texts and [r["task"] for r in mixed] == tasks
    grouped = predictor.predict(texts, task=tasks, batch_size=5, group_tasks=True)  # mostly one task per batch
    assert [r["label"] for r in grouped] == [r["label"] for r in mixed]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(grouped, mixed)) < 1e-5
    for t in world["tds"]:
        idx = [i for i, x in enumerate(tasks) if x == t]
        single = predictor.predict([texts[i] for i in idx], task=t, batch_size=64)
        for k, i in enumerate(idx):
            assert single[k]["label"] == mixed[i]["label"]
            assert abs(single[k]["confidence"] - mixed[i]["confidence"]) < 1e-5
    # and the adapters really differ from each other and from the base
    other = predictor.predict(texts, task=["senti" if t == "topic" else "topic" for t in tasks])
    assert any(a["label"] != b["label"] for a, b in zip(mixed, other))


def test_bf16_prediction_stays_close_to_float32(world, predictor):
    """bf16 autocast changes the numbers a little, not the answers: routed and per-task rows keep
    their task and (here) their label, confidences within a few hundredths, still Python floats."""
    tasks, texts = _mixed(world)
    fast = Predictor.from_artifacts(world["lb"], world["ads"], router=world["router"], bf16=True)
    for how in (tasks, None):
        want, got = predictor.predict(texts, task=how), fast.predict(texts, task=how)
        assert [r["task"] for r in got] == [r["task"] for r in want]
        agree = sum(a["label"] == b["label"] for a, b in zip(got, want)) / len(want)
        assert agree >= 0.9, agree
        assert all(isinstance(r["confidence"], float) for r in got if r["confidence"] is not None)
        close = [abs(a["confidence"] - b["confidence"]) for a, b in zip(got, want) if a["label"] == b["label"]]
        assert max(close) < 0.05, close
    assert not predictor.bf16 and fast.bf16


def test_mixed_batch_matches_a_plain_single_adapter_model(world, predictor):
    """Cross-check against PEFT with only one adapter loaded (no mixed-batch machinery)."""
    import torch
    from peft import PeftModel

    from adaptreg.base import mean_pool

    tasks, texts = _mixed(world)
    mixed = predictor.predict(texts, task=tasks)
    lb, t = world["lb"], "senti"
    model = PeftModel.from_pretrained(copy.deepcopy(lb.model), str(world["ads"][t])).eval()
    head = artifact.load_head(world["ads"][t])
    idx = [i for i, x in enumerate(tasks) if x == t]
    with torch.inference_mode():
        b = lb.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        prob = torch.softmax(mean_pool(model(**b).last_hidden_state, b["attention_mask"]) @ head.weight.T + head.bias, -1)
    conf, lab = prob.max(-1)
    for k, i in enumerate(idx):
        assert mixed[i]["label"] == head.labels[lab[k]]
        assert abs(mixed[i]["confidence"] - conf[k].item()) < 1e-5


def test_packed_low_rank_pass_equals_folded_padded_layers(world, predictor):
    """On a BERT base every task's rows share one packed pass of the frozen layers plus each
    task's low-rank update; the padded pass through private copies with the update folded in
    (what other bases and DoRA adapters run) gives the same rows."""
    assert predictor._packed and all(isinstance(predictor._branch(e), dict) for e in predictor._entries.values())
    folded = Predictor.from_artifacts(world["lb"], world["ads"], router=world["router"])
    folded._packed = False
    tasks, texts = _mixed(world)
    for task in (tasks, None):  # given tasks, then routed
        a, b = predictor.predict(texts, task=task, batch_size=4), folded.predict(texts, task=task, batch_size=4)
        assert [(r["task"], r["label"]) for r in a] == [(r["task"], r["label"]) for r in b]
        assert max(abs((x["confidence"] or 0) - (y["confidence"] or 0)) for x, y in zip(a, b)) < 1e-5
    assert all(isinstance(folded._branch(e), list) for e in folded._entries.values())


def test_routed_predict_follows_the_router_and_abstains(world, predictor):
    tasks, texts = _mixed(world)
    texts = texts + ["0 1 2 3 4 5 6 7 8 9", "zzzz qqqq xxxx vvvv"]
    out = predictor.predict(texts)
    routed, scores = world["router"].route(world["router"].features(world["lb"], texts))
    assert [r["task"] for r in out] == routed
    assert [r["route_score"] for r in out] == pytest.approx(list(scores), rel=1e-4)
    for r in out:
        if r["task"] == UNKNOWN:
            assert r["label"] == UNKNOWN and r["confidence"] is None
        else:
            assert r["label"] in world["tds"][r["task"]].labels and 0 < r["confidence"] <= 1
    # a tiny threshold sends everything to unknown, a huge one nothing
    assert all(r["task"] == UNKNOWN for r in predictor.predict(texts, threshold=1e-6))
    assert not any(r["task"] == UNKNOWN for r in predictor.predict(texts, threshold=1e6))
    assert predictor.last_timing_["n"] == len(texts)


def test_callers_base_is_untouched(world, predictor):
    lb = world["lb"]
    from adaptreg.base import fingerprint

    assert fingerprint(lb.model) == lb.fingerprint
    assert not any("lora" in n for n, _ in lb.model.named_modules())


def test_other_base_is_refused(world, other_tiny_base):
    other = load_base(str(other_tiny_base))
    with pytest.raises(IncompatibleBaseError, match="built on base"):
        Predictor.from_artifacts(other, world["ads"])


def test_unknown_task_is_a_clear_error(predictor):
    with pytest.raises(NotFoundError, match="no adapter loaded"):
        predictor.predict(["x"], task="nope")


def test_predictor_from_registry_and_cli(world, tmp_path, tmp_path_factory):
    from adaptreg.compose.router import add_task_to_registry_router, load_router, router_versions

    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    reg.register(make_adapter(world["lb"], "topic", world["tds"]["topic"], tmp_path / "topic-v2", seed=7))
    reg.promote("topic", 1, "production")
    for t in ("topic", "senti"):
        router, rec = add_task_to_registry_router(reg, t, world["lb"],
                                                  new_router=Router(max_length=MAX_LEN) if t == "topic" else None)
    # entries are task versions: topic's production version (1), senti's latest (1)
    assert [v["tasks"] for v in router_versions(reg)] == [["topic@1", "senti@1"], ["topic@1"]]
    assert sorted(t["task"] for t in reg.list_tasks()) == ["senti", "topic"]  # the router is not a task
    loaded = load_router(reg)
    feats = router.features(world["lb"], world["tds"]["senti"].test.texts)
    assert [r.split("@")[0] for r in loaded.route(feats)[0]] == world["router"].route(feats)[0]

    pred = Predictor(reg, base=world["lb"])
    assert pred._entries["topic"].version == 1 and pred._entries["senti"].version == 1  # production alias wins
    tasks, texts = _mixed(world, 5)
    expect = Predictor.from_artifacts(world["lb"], world["ads"], router=world["router"]).predict(texts)
    got = pred.predict(texts)
    assert [(r["task"], r["label"]) for r in got] == [(r["task"], r["label"]) for r in expect]

    # CLI: one row per input row, input order, id column carried through
    rows = [{"id": f"r{i}", "body": x} for i, x in enumerate(texts)] + [{"id": "odd", "body": "0 1 2 3 4 5 6 7 8 9"}]
    inp = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.csv"
    runner = CliRunner()
    res = runner.invoke(main, ["predict", "--data", str(inp), "--text-col", "body", "--id-col", "id", "--output", str(out),
                               "--registry", str(tmp_path / "reg"), "--base", str(world["lb"].id)])
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    assert [r["task"] for r in written[:-1]] == [r["task"] for r in expect]
    res = runner.invoke(main, ["predict", "--text", texts[0], "--text", texts[1], "--task", "senti", "--json",
                               "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["task"] for r in data] == ["senti", "senti"] and [r["text"] for r in data] == texts[:2]
    res = runner.invoke(main, ["predict", "--text", texts[0], "--text", texts[1], "--task", "senti", "--json", "--bf16",
                               "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 0 and [r["task"] for r in json.loads(res.stdout)] == ["senti", "senti"], res.output
    res = runner.invoke(main, ["predict", "--text", "x", "--task", "senti", "--stack", "topic", "--bf16",
                               "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 2 and "--bf16" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["predict", "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 2 and "either --data" in res.output
    res = runner.invoke(main, ["route", "show", "--json", "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 0 and [r["version"] for r in json.loads(res.stdout)] == [2, 1]
    res = runner.invoke(main, ["route", "eval", "--json", "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)["per_task"]) == {"topic", "senti"}


def test_cli_module_imports_no_torch():
    code = "import sys, adaptreg.cli.compose; assert 'torch' not in sys.modules and 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_minilm_routes_and_predicts(tmp_path):
    """The real MiniLM: two small tasks, random adapters; routing must beat chance clearly."""
    from conftest import make_toy_rows

    lb = load_base("minilm")
    tds = {"topic": load_task(str(write_csv(tmp_path / "t.csv", make_toy_rows(30)))),
           "senti": load_task(str(write_csv(tmp_path / "s.csv", sentiment_rows(30))))}
    ads = {t: make_adapter(lb, t, td, tmp_path / t, seed=i) for i, (t, td) in enumerate(tds.items())}
    router = Router()
    router.fit({t: router.features(lb, td.train.texts) for t, td in tds.items()}, {t: td.train.y for t, td in tds.items()})
    pred = Predictor.from_artifacts(lb, ads, router=router)
    rows = [(t, x) for t, td in tds.items() for x in td.test.texts]
    out = pred.predict([x for _, x in rows])
    acc = sum(r["task"] == t for r, (t, _) in zip(out, rows)) / len(rows)
    assert acc > 0.8
    assert pred.predict(["Der Hund schläft im Garten und träumt."])[0]["task"] == UNKNOWN


def test_router_layers_the_base_lacks_are_refused_by_name(world):
    from adaptreg.errors import ConfigError

    deep = Router(layers=(-9, -2))  # the tiny base has 5 hidden states
    with pytest.raises(ConfigError, match="hidden-state index -9 does not exist: this base has 5"):
        deep.features(world["lb"], ["a b c"])
    assert Router(layers=(0, -1)).features(world["lb"], ["a b c", "d"]).shape == (2, 2 * world["lb"].hidden_size
                                                                                   + SURFACE_DIMS)
    assert Router(layers=(0, -1), surface=0).features(world["lb"], ["a b c"]).shape == (1, 2 * world["lb"].hidden_size)


def test_concurrent_router_updates_keep_every_task(world, tmp_path, tmp_path_factory):
    """Two onboardings adding their task at once: the second must extend the first's router
    (read-modify-write under the registry lock), not an older version."""
    import threading

    from adaptreg.compose.router import add_task_to_registry_router, load_router
    from adaptreg.registry import Registry

    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    start, errors = threading.Barrier(2), []

    def add(task: str) -> None:
        try:
            start.wait()
            add_task_to_registry_router(Registry(tmp_path / "reg"), task, world["lb"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(t,)) for t in ("topic", "senti")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert sorted(load_router(reg).tasks_) == ["senti@1", "topic@1"]


def test_route_add_cli_reads_the_router_under_the_lock(world, tmp_path, tmp_path_factory):
    """`adaptreg route add` used to load the router before taking the lock and extend that copy:
    a task added by someone else meanwhile was lost. Simulated by adding senti between the CLI's
    start and its write (a registration that lands while the CLI computes features)."""
    from adaptreg.compose import routing as router_mod
    from adaptreg.compose.routing import add_task_to_registry_router, load_router

    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    add_task_to_registry_router(reg, "topic", world["lb"], new_router=Router(max_length=MAX_LEN))
    real = router_mod.task_features
    sneaked = []

    def features_then_race(*args, **kwargs):
        out = real(*args, **kwargs)
        if not sneaked:  # another writer lands while this one computes features
            sneaked.append(1)
            add_task_to_registry_router(reg, "senti", world["lb"])
        return out

    router_mod.task_features = features_then_race
    try:
        res = CliRunner().invoke(main, ["route", "add", "topic", "--registry", str(tmp_path / "reg"),
                                        "--base", str(world["lb"].id)])
    finally:
        router_mod.task_features = real
    assert res.exit_code == 0, res.output
    assert sorted(load_router(reg).tasks_) == ["senti@1", "topic@1"]


def test_routing_follows_the_served_version(world, tmp_path, tmp_path_factory):
    """Version 2 of `topic` is trained on other data; the router keeps both versions' statistics
    and routes with the version the alias serves: promoting v1 back restores its routing
    without a rebuild."""
    from adaptreg.compose.router import add_task_to_registry_router, load_router

    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    reg.register(world["ads"]["topic"])
    add_task_to_registry_router(reg, "topic", world["lb"], new_router=Router(max_length=MAX_LEN))
    v2 = make_adapter(world["lb"], "topic", world["tds"]["senti"], tmp_path / "topic-v2", seed=5)
    reg.register(v2)
    add_task_to_registry_router(reg, "topic", world["lb"])  # the latest version (2)
    router = load_router(reg)
    assert router.tasks_ == ["topic@1", "topic@2"]
    texts = world["tds"]["topic"].test.texts
    feats = router.features(world["lb"], texts)
    by_version = {v: router.route(feats, tasks=[f"topic@{v}"])[1] for v in (1, 2)}
    assert not (by_version[1] == by_version[2]).all()

    def served_scores():
        pred = Predictor(reg, base=world["lb"])
        return pred._entries["topic"].version, pred._route_feats(pred.route_features(texts), None)[1]

    v, scores = served_scores()  # no alias: the latest version serves
    assert v == 2 and np.allclose(scores, by_version[2], rtol=1e-5)
    reg.promote("topic", 1)
    v, scores = served_scores()
    assert v == 1 and np.allclose(scores, by_version[1], rtol=1e-5)
    reg.archive("topic", 1)
    v, scores = served_scores()
    assert v == 2 and np.allclose(scores, by_version[2], rtol=1e-5)
