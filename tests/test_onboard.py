"""Onboarding on a tiny random BERT (fast) and on the real MiniLM (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from adaptreg import artifact
from adaptreg.base import fingerprint, load_base
from adaptreg.cli import main
from adaptreg.config import LoraSettings, TrainSettings
from adaptreg.errors import ConfigError
from adaptreg.train import onboard

FAST = TrainSettings(epochs=6, batch_size=8, lr=2e-2, max_length=32, patience=0, select="adapter")


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory, request):
    from conftest import make_toy_rows
    import csv

    d = tmp_path_factory.mktemp("onb")
    data = d / "toy.csv"
    with open(data, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(make_toy_rows())
    base = load_base(str(tiny_base))
    before = fingerprint(base.model)
    state_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    res = onboard("toy", str(data), base=base, train=FAST, output=str(d / "out"), register=False, progress=False)
    return res, base, before, state_before, data


def test_base_is_bit_identical_after_training(trained):
    res, base, before, state_before, _ = trained
    after = base.model.state_dict()
    assert set(after) == set(state_before)  # LoRA layers were taken out again
    assert all((after[k] == state_before[k]).all() for k in after)
    assert fingerprint(base.model) == before == res.manifest["base"]["fingerprint"]
    assert res.base_unchanged


def test_artifact_is_a_standard_peft_directory(trained):
    from peft import PeftModel
    from transformers import AutoModel

    res, base, _, _, _ = trained
    out = Path(res.artifact_dir)
    for name in artifact.CHECKED_FILES + (artifact.MANIFEST, "confusion_matrix.png"):
        assert (out / name).is_file(), name
    manifest = artifact.verify(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and sorted(cfg["target_modules"]) == sorted(manifest["adapter"]["targets"])
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base.ref.path), str(out))
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    head = artifact.load_head(out)
    assert head.labels == ["business", "sport", "tech"] == manifest["labels"]
    for key in ("test_accuracy", "test_macro_f1", "probe_test_accuracy", "trainable_params", "trainable_pct",
                "adapter_bytes", "train_seconds", "train_examples_per_s"):
        assert manifest["metrics"][key] is not None, key
    assert manifest["data"]["fingerprint"].startswith("sha256:")
    assert manifest["libraries"]["peft"]
    assert len(manifest["history"]) == FAST.epochs
    assert len(manifest["report"]["confusion_matrix"]) == 3
    assert manifest["metrics"]["test_accuracy"] >= 0.6  # separable toy topics: it learned something


def test_same_seed_same_adapter(trained, tmp_path):
    res, base, _, _, data = trained
    again = onboard("toy", str(data), base=base, train=FAST, output=str(tmp_path / "o"), register=False, progress=False)
    assert again.manifest["files"]["adapter_model.safetensors"] == res.manifest["files"]["adapter_model.safetensors"]
    assert again.manifest["metrics"]["test_accuracy"] == res.manifest["metrics"]["test_accuracy"]


@pytest.mark.parametrize("kind", ["dora", "lora-fa"])
def test_adapter_kinds(trained, tmp_path, kind):
    from safetensors.torch import load_file

    res, base, _, _, data = trained
    out = onboard("toy", str(data), base=base, lora=LoraSettings(kind=kind, rank=4, rslora=True),
                  train=TrainSettings(epochs=1, batch_size=16, max_length=32), output=str(tmp_path / kind),
                  register=False, probe=False, progress=False)
    cfg = json.loads((tmp_path / kind / "adapter_config.json").read_text())
    assert cfg["use_dora"] is (kind == "dora") and cfg["use_rslora"] is True
    weights = load_file(str(tmp_path / kind / "adapter_model.safetensors"))
    assert any("lora_magnitude_vector" in k for k in weights) is (kind == "dora")
    if kind == "lora-fa":
        # only B and the head train: A keeps its random init, so trainables are half the LoRA weights
        n_a = sum(v.numel() for k, v in weights.items() if "lora_A" in k)
        n_head = 32 * 3 + 3
        assert out.metrics["trainable_params"] == sum(v.numel() for v in weights.values()) - n_a + n_head


def _first_step(model, base, td, settings, caches, monkeypatch):
    """Run ``fit`` for one optimiser step; return the gradients it stepped with and FGM's perturbation.

    The gradients are read where ``fit`` clips them, just before ``opt.step()``."""
    import torch

    import adaptreg.train as T

    seen: dict = {}
    real_perturb = T._FGM.perturb

    def record_grads(params, *a, **k):
        seen.setdefault("grads", [p.grad.detach().clone() for p in params])
        return torch.tensor(0.0)

    def record_delta(self):
        ok = real_perturb(self)
        seen.setdefault("delta", self.delta.clone() if ok else None)
        return ok

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record_grads)
    monkeypatch.setattr(T._FGM, "perturb", record_delta)  # _TrunkFGM inherits it
    T.fit(model, base.tokenizer, td, settings, progress=False, caches=caches, validate=False, keep_best=False)
    return seen["grads"], seen.get("delta")


@pytest.mark.parametrize("path", ["trunk", "full"])
def test_fgm_perturbs_the_input_and_changes_the_gradient(tiny_base, toy_csv, monkeypatch, path):
    """FGM on one batch, against the same batch computed here by hand: the step's gradient is
    grad L(x) + grad L(x + eps * g / ||g||) with g = dL/dx, x the branch input (trunk path,
    what onboarding uses) or the embedding output (full path) -- not grad L(x) alone (FGM off),
    and not 2 x grad L(x) (a perturbation that changed nothing)."""
    import copy

    import torch

    from adaptreg.data.tasks import load_task
    from adaptreg.train import TaskModel, _find_embeddings, _load_trainable_state, _trainable_state, build_peft_model
    from adaptreg.trunk import TrunkCache, split_point

    base = load_base(str(tiny_base))
    td = load_task(str(toy_csv))
    n, eps = len(td.train), 0.5
    # one step over the whole training split; no dropout anywhere, so both runs see the same function
    settings = {"epochs": 1, "batch_size": n, "lr": 1e-3, "max_length": 32, "grad_clip": 1.0, "base_dropout": False}
    split = split_point(base.model, 2) if path == "trunk" else 0
    torch.manual_seed(0)
    peft_model = build_peft_model(copy.deepcopy(base.model), base.model_type, LoraSettings(dropout=0.0), split=split)
    model = TaskModel(peft_model, torch.nn.Linear(base.hidden_size, td.n_labels), split, base_dropout=False)
    caches = {"train": TrunkCache(base.model, base.tokenizer, td.train.texts, 32, split)} if path == "trunk" else None
    start = _trainable_state(model)

    off, no_delta = _first_step(model, base, td, TrainSettings(**settings), caches, monkeypatch)
    _load_trainable_state(model, start)
    on, delta = _first_step(model, base, td, TrainSettings(**settings, fgm_epsilon=eps), caches, monkeypatch)
    _load_trainable_state(model, start)
    assert no_delta is None and delta is not None

    # the same batch by hand (the loss is a mean: the order of rows in fit's batch does not matter)
    params = list(model.parameters())
    y = torch.tensor(td.train.y)
    loss_fn = torch.nn.CrossEntropyLoss()
    box: dict = {}
    if path == "trunk":
        hidden, mask = caches["train"].batch(list(range(n)))

        def forward(d):  # x = the branch input; d = None: mark x for its gradient
            box.setdefault("x", hidden.clone().requires_grad_(True))
            return model.from_trunk(box["x"] if d is None else hidden + d, mask)
    else:
        batch = base.tokenizer(list(td.train.texts), padding=True, truncation=True, max_length=32, return_tensors="pt")

        def hook(module, inputs, output):  # x = the embedding output
            if box.get("d") is not None:
                return output + box["d"]
            box["x"] = output.detach().requires_grad_(True)
            return box["x"]

        def forward(d):
            box["d"] = d
            return model(batch)

        handle = _find_embeddings(model.peft_model.get_base_model()).register_forward_hook(hook)
    model.train(True)
    try:
        *clean, g = torch.autograd.grad(loss_fn(forward(None), y), params + [box["x"]])
        want_delta = eps * g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1)
        adv = torch.autograd.grad(loss_fn(forward(want_delta), y), params)
    finally:
        if path == "full":
            handle.remove()

    # FGM's perturbation: eps per example, along the input gradient
    assert delta.shape == g.shape
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((n,), eps), rtol=1e-4)
    # FGM off: the step uses grad L(x); on: grad L(x) + grad L(x + delta)
    for got, c in zip(off, clean):
        assert torch.allclose(got, c, rtol=1e-4, atol=1e-7)
    for got, c, a in zip(on, clean, adv):
        assert torch.allclose(got, c + a, rtol=1e-4, atol=1e-7)
    # and the perturbed gradient really differs from the clean one (else FGM would just double it)
    diff = max(float((a - c).abs().max()) for a, c in zip(adv, clean))
    scale = max(float(c.abs().max()) for c in clean)
    assert diff > 1e-3 * scale, (diff, scale)


def test_early_stopping(trained, tmp_path):
    res, base, _, _, data = trained
    out = onboard("toy", str(data), base=base, train=TrainSettings(epochs=30, batch_size=16, lr=1e-6, max_length=32, patience=1),
                  output=str(tmp_path / "e"), register=False, probe=False, progress=False)
    assert out.manifest["training"]["epochs_run"] < 30


def test_interrupt_leaves_nothing_half_written(trained, tmp_path, monkeypatch):
    res, base, before, _, data = trained

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "save_head", boom)  # after the PEFT files are on disk
    with pytest.raises(KeyboardInterrupt):
        onboard("toy", str(data), base=base, train=TrainSettings(epochs=1, max_length=32), output=str(tmp_path / "ki"),
                register=False, probe=False, progress=False)
    assert os.listdir(tmp_path) == []
    assert fingerprint(base.model) == before


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="rank == 0"):
        LoraSettings(rank=0)
    with pytest.raises(ConfigError, match="schedule 'step'"):
        TrainSettings(schedule="step")


def test_wrong_targets_is_clear(trained, tmp_path):
    res, base, _, _, data = trained
    with pytest.raises(ConfigError, match="do not match"):
        onboard("toy", str(data), base=base, lora=LoraSettings(targets=["q_proj"]), train=FAST, output=str(tmp_path / "t"),
                register=False, probe=False, progress=False)


def test_cli_onboard_json(tiny_base, toy_csv, tmp_path):
    r = CliRunner().invoke(main, ["onboard", "toy", "--data", str(toy_csv), "--base", str(tiny_base), "--epochs", "1",
                                  "--max-length", "32", "--no-register", "--out", str(tmp_path / "a"), "-q", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["task"] == "toy" and out["base_unchanged"] is True and 0 <= out["metrics"]["test_accuracy"] <= 1
    # where the time went: the process's phases in the result, train_task's own in the manifest
    assert {"load_data", "load_base", "trunk_cache", "probe", "train", "evaluate", "write_and_register"} <= set(out["seconds"])
    assert all(v >= 0 for v in out["seconds"].values()) and out["training"]["seconds"]["train"] == out["seconds"]["train"]
    r = CliRunner().invoke(main, ["onboard", "toy", "--data", str(toy_csv), "--base", str(tiny_base), "--epochs", "1",
                                  "--max-length", "32", "--no-register", "--out", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0 and r.stdout.splitlines()[-1].startswith("time "), r.output


def test_cli_onboard_deprecated_output_still_works(tiny_base, toy_csv, tmp_path):
    """The old folder spelling --output: one deprecation line on stderr, then exactly --out."""
    r = CliRunner().invoke(main, ["onboard", "toy", "--data", str(toy_csv), "--base", str(tiny_base), "--epochs", "1",
                                  "--max-length", "32", "--no-probe", "--no-register", "--output", str(tmp_path / "a"),
                                  "-q", "--json"])
    assert r.exit_code == 0, r.output
    warning = ("warning: --output is deprecated for a folder; use --out DIR "
               "(--output will be removed in the next release)")
    assert r.stderr.splitlines()[0] == warning and r.stderr.count("warning:") == 1, r.stderr
    assert json.loads(r.stdout)["task"] == "toy" and (tmp_path / "a" / "manifest.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nope.csv"], "not found"),
        (["--data", "{toy}", "--text-col", "body"], "no column 'body'"),
        (["--data", "{toy}", "--rank", "0"], "rank == 0"),
        (["--data", "{toy}", "--base", "/nonexistent/model"], "not a model directory"),
        (["--data", "{toy}", "--no-register"], "give --out DIR"),
    ],
)
def test_cli_bad_input_one_line(toy_csv, tiny_base, tmp_path, args, message):
    args = [a.replace("{toy}", str(toy_csv)) for a in args]
    if "--base" not in args:
        args += ["--base", str(tiny_base)]
    r = CliRunner().invoke(main, ["onboard", "toy", *args, "-q"])
    assert r.exit_code == 2
    assert message in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) <= 2  # the "onboarding ..." log line + the error
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_cli_bad_task_name(toy_csv, tiny_base):
    r = CliRunner().invoke(main, ["onboard", "../evil", "--data", str(toy_csv), "--base", str(tiny_base)])
    assert r.exit_code == 2 and "task name" in r.stderr


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom adaptreg.cli import main\n"
            "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0\n"
            "for cmd in list(main.commands):\n    assert CliRunner().invoke(main, [cmd, '--help']).exit_code == 0\n"
            "heavy = [m for m in ('torch', 'peft', 'mlflow', 'transformers', 'sklearn') if m in sys.modules]\n"
            "print(heavy)\nassert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_real_minilm_small_sample(toy_csv, tmp_path):
    base = load_base("minilm")
    before = base.fingerprint
    res = onboard("toy", str(toy_csv), base=base, train=TrainSettings(epochs=2, max_length=32, lr=2e-3),
                  output=str(tmp_path / "m"), register=False, progress=False)
    m = res.metrics
    assert base.model.config.hidden_size == 384 and m["trainable_pct"] < 1.0
    assert m["test_accuracy"] >= 0.9 and res.base_unchanged and fingerprint(base.model) == before
