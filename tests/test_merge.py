"""Merging adapters (refusals, linear/ties/svd, registration with parents) and exporting into the base."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from adaptreg.base import load_base
from adaptreg.cli import main
from adaptreg.compose.merge import ExportedModel, check_mergeable, export_merged, merge_adapters
from adaptreg.compose.predict import Predictor
from adaptreg.data.tasks import load_task
from adaptreg.errors import MergeError
from test_predict import fresh_registry, make_adapter, sentiment_rows, write_csv


@pytest.fixture(scope="module")
def world(tiny_base, tmp_path_factory):
    from conftest import make_toy_rows

    d = tmp_path_factory.mktemp("merge")
    lb = load_base(str(tiny_base))
    tds = {"topic": load_task(str(write_csv(d / "topic.csv", make_toy_rows(20)))),
           "senti": load_task(str(write_csv(d / "senti.csv", sentiment_rows())))}
    ads = {t: make_adapter(lb, t, td, d / t, seed=i) for i, (t, td) in enumerate(tds.items())}
    return {"lb": lb, "tds": tds, "ads": ads, "dir": d}


def test_refusals_say_why(world, other_tiny_base, tmp_path):
    lb, td = world["lb"], world["tds"]["senti"]
    topic = world["ads"]["topic"]
    r8 = make_adapter(lb, "r8", td, tmp_path / "r8", rank=8)
    with pytest.raises(MergeError, match="rank 8.*needs equal ranks"):
        check_mergeable({"topic": topic, "r8": r8}, "ties")
    check_mergeable({"topic": topic, "r8": r8}, "svd")  # svd and cat take any ranks
    other = make_adapter(load_base(str(other_tiny_base)), "other", td, tmp_path / "other")
    with pytest.raises(MergeError, match="only adapters of one base"):
        check_mergeable({"topic": topic, "other": other}, "linear")
    tg = make_adapter(lb, "tg", td, tmp_path / "tg", targets=("query", "key", "value"))
    with pytest.raises(MergeError, match="same --targets"):
        check_mergeable({"topic": topic, "tg": tg}, "linear")
    rs = make_adapter(lb, "rs", td, tmp_path / "rs", rslora=True)
    with pytest.raises(MergeError, match="rsLoRA"):
        check_mergeable({"topic": topic, "rs": rs}, "linear")
    dora = make_adapter(lb, "dora", td, tmp_path / "dora", dora=True)
    with pytest.raises(MergeError, match="DoRA"):
        check_mergeable({"topic": topic, "dora": dora}, "linear")
    with pytest.raises(MergeError, match="at least 2"):
        check_mergeable({"topic": topic}, "linear")
    with pytest.raises(MergeError, match="unknown"):
        check_mergeable({"topic": topic, "r8": r8}, "magic")


@pytest.mark.parametrize("rslora", [False, True])
def test_linear_merge_with_one_weight_reproduces_that_adapter(world, tmp_path, rslora):
    """Merged scaling must be exactly 1 (PEFT copies use_rslora onto alpha = r: fixed here)."""
    lb, tds = world["lb"], world["tds"]
    a = make_adapter(lb, "topic", tds["topic"], tmp_path / "a", rslora=rslora, seed=3)
    b = make_adapter(lb, "senti", tds["senti"], tmp_path / "b", rslora=rslora, seed=4)
    res = merge_adapters({"topic": a, "senti": b}, name="m", method="linear", weights=[1.0, 0.0], base=lb,
                         register=False, output=tmp_path / "m", data=tds)
    assert res.retention["topic"]["retention"] == pytest.approx(1.0)
    texts = tds["topic"].test.texts
    want = Predictor.from_artifacts(lb, {"topic": a}).predict(texts, task="topic")
    got = Predictor.from_artifacts(lb, {"topic": res.artifact_dir}).predict(texts, task="topic")
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert max(abs(x["confidence"] - y["confidence"]) for x, y in zip(got, want)) < 1e-5


def test_merge_registers_with_parents_and_keeps_every_head(world, tmp_path, tmp_path_factory, method="ties"):
    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    res = merge_adapters(["topic", "senti@1"], name="combo", method=method, base=world["lb"], registry=reg,
                         data=world["tds"])
    assert res.version == 1 and res.record["version"] == 1
    rec = reg.load("combo", base=world["lb"])
    assert rec["parents"] == [{"task": "topic", "version": 1}, {"task": "senti", "version": 1}]
    m = rec["manifest"]
    assert m["merge"]["method"] == method and set(m["merge"]["heads"]) == {"topic", "senti"}
    for t, r in res.retention.items():
        assert 0 <= r["merged_accuracy"] <= 1 and r["n_test"] == len(world["tds"][t].test)
        assert r["retention"] == pytest.approx(r["merged_accuracy"] / r["source_accuracy"])
    # one merged adapter serves both tasks, each with its own head and labels
    pred = Predictor.from_artifacts(world["lb"], {"topic": rec["path"], "senti": rec["path"]})
    out = pred.predict(["sport match goal", "good great fun"], task=["topic", "senti"])
    assert len(pred._branches) == 1  # folded once, shared by both tasks
    assert out[0]["label"] in world["tds"]["topic"].labels and out[1]["label"] in world["tds"]["senti"].labels


def test_tune_picks_scale_and_density_on_validation_and_builds_that_merge(world, tmp_path):
    lb, tds = world["lb"], world["tds"]
    res = merge_adapters({t: world["ads"][t] for t in ("topic", "senti")}, name="tuned", method="ties", base=lb,
                         register=False, output=tmp_path / "tuned", data=tds, tune=True)
    tuning = res.manifest["merge"]["tuning"]
    grid = tuning["grid"]
    assert tuning["on"] == "validation" and len(grid) == 25
    best = max(grid, key=lambda g: (g["min"], g["mean"]))
    assert best["min"] == max(g["min"] for g in grid)
    assert res.manifest["merge"]["density"] == tuning["chosen"]["density"] == best["density"]
    assert res.manifest["merge"]["weights"] == [tuning["chosen"]["scale"]] * 2
    # the written adapter is the chosen candidate: its validation accuracy is the one the grid recorded
    pred = Predictor.from_artifacts(lb, {t: res.artifact_dir for t in ("topic", "senti")})
    for t in ("topic", "senti"):
        val = tds[t].val
        out = pred.predict(val.texts, task=t)
        acc = sum(r["label"] == tds[t].labels[y] for r, y in zip(out, val.y)) / len(val.y)
        assert acc == pytest.approx(best["val_retention"][t] * tuning["source_val_accuracy"][t], abs=1e-9)


def _lora_deltas(adapter_dir) -> dict:
    """Each adapted module's weight update scaling * B @ A, read from the saved PEFT files."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert not cfg.get("use_rslora") and not cfg.get("use_dora")
    scaling = cfg["lora_alpha"] / cfg["r"]
    w = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {k[: -len(".lora_A.weight")]: scaling * (w[k.replace("lora_A", "lora_B")] @ w[k])
            for k in w if k.endswith(".lora_A.weight")}


def test_svd_merge_equals_truncated_svd_of_the_weighted_sum(world, tmp_path):
    """Sources of ranks 4 and 8, default weights 1/2 each, default rank 8: every module's merged
    update is the best rank-8 approximation of 0.5 * dW_topic + 0.5 * dW_senti, computed here with
    torch.linalg.svd (and its error is the discarded singular values, Eckart-Young)."""
    import torch

    lb, tds = world["lb"], world["tds"]
    r8 = make_adapter(lb, "senti", tds["senti"], tmp_path / "r8", rank=8, seed=5)
    topic = world["ads"]["topic"]
    res = merge_adapters({"topic": topic, "senti": r8}, name="svdm", method="svd", base=lb,
                         register=False, output=tmp_path / "svd", data=tds)
    assert set(res.retention) == {"topic", "senti"}
    assert res.manifest["merge"]["weights"] == [0.5, 0.5]
    assert json.loads((tmp_path / "svd" / "adapter_config.json").read_text())["r"] == 8

    src = [_lora_deltas(topic), _lora_deltas(r8)]
    merged = _lora_deltas(tmp_path / "svd")
    assert set(merged) == set(src[0]) == set(src[1]) and len(merged) == 8  # query, value x 4 layers
    for key, got in merged.items():
        full = 0.5 * src[0][key] + 0.5 * src[1][key]
        U, S, Vh = torch.linalg.svd(full)
        want = U[:, :8] @ torch.diag(S[:8]) @ Vh[:8]
        assert S[8] > 1e-3 * S[0], key  # rank 4 + rank 8 > 8: the truncation is not a no-op
        assert torch.allclose(got, want, atol=1e-5 * float(S[0]), rtol=1e-4), key
        err = torch.linalg.norm(full - got)
        assert float(err) == pytest.approx(float(S[8:].square().sum().sqrt()), rel=1e-3), key


def test_export_loads_with_automodel_and_matches_the_adapter(world, tmp_path):
    from transformers import AutoModel

    lb, t = world["lb"], "senti"
    out = export_merged(world["ads"][t], tmp_path / "export", base=lb)
    assert (out / "config.json").is_file() and (out / "head.safetensors").is_file()
    model = AutoModel.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in model.named_modules())
    texts = world["tds"][t].test.texts
    labels, confs = ExportedModel(out).predict(texts)
    want = Predictor.from_artifacts(lb, {t: world["ads"][t]}).predict(texts, task=t)
    assert labels == [r["label"] for r in want]
    assert max(abs(c - r["confidence"]) for c, r in zip(confs, want)) < 1e-4


def test_cli_merge_and_export(world, tmp_path, tmp_path_factory):
    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    runner = CliRunner()
    loc = str(tmp_path / "reg")
    res = runner.invoke(main, ["merge", "topic", "senti", "--name", "both", "--method", "ties", "--density", "0.7",
                               "--no-eval", "--out", str(tmp_path / "merged"), "--json", "--registry", loc])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["version"] == 1 and [p["task"] for p in summary["parents"]] == ["topic", "senti"]
    assert (tmp_path / "merged" / "manifest.json").is_file()  # --out: the folder gets the merged artifact too
    res = runner.invoke(main, ["merge", "topic", "--name", "x", "--registry", loc])
    assert res.exit_code == 2 and "at least 2" in res.output
    res = runner.invoke(main, ["export", "both", "--merged", str(tmp_path / "exp"), "--json", "--registry", loc])
    assert res.exit_code == 0, res.output
    assert ExportedModel(tmp_path / "exp", task="senti").labels == world["tds"]["senti"].labels


def test_stacked_adapters_add_up(world, tmp_path):
    """Two active adapters = the sum of their updates; weight 0 on one = the other alone."""
    from adaptreg.compose.stack import StackedModel

    lb, ads = world["lb"], world["ads"]
    alone = StackedModel(lb, {"senti": ads["senti"]}, head="senti").features(world["tds"]["senti"].test.texts)
    off = StackedModel(lb, {"topic": ads["topic"], "senti": ads["senti"]}, head="senti", weights={"topic": 0.0})
    texts = world["tds"]["senti"].test.texts
    assert (off.features(texts) - alone).abs().max() < 1e-5
    both = StackedModel(lb, {"topic": ads["topic"], "senti": ads["senti"]}, head="senti")
    assert (both.features(texts) - alone).abs().max() > 1e-3
    labels, confs = both.predict(texts)
    assert set(labels) <= set(world["tds"]["senti"].labels) and len(confs) == len(texts)


def test_cli_predict_stack(world, tmp_path, tmp_path_factory):
    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    for t in ("topic", "senti"):
        reg.register(world["ads"][t])
    texts = world["tds"]["senti"].test.texts[:6]
    common = ["--registry", str(tmp_path / "reg"), "--base", str(world["lb"].id), "--json"]
    for t in texts:
        common += ["--text", t]
    run = CliRunner()

    def call(*extra: str) -> list[dict]:
        res = run.invoke(main, ["predict", "--task", "senti", *extra, *common])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    plain, off, both = call(), call("--stack", "topic:0"), call("--stack", "topic")
    assert [r["text"] for r in both] == texts and {r["stack"] for r in both} == {"topic:1"}
    assert [r["label"] for r in off] == [r["label"] for r in plain]  # weight 0 = senti alone
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(off, plain)) < 1e-5
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(both, plain)) > 1e-4
    bad = run.invoke(main, ["predict", "--stack", "topic", *common])
    assert bad.exit_code != 0 and "give --task T as well" in bad.output
