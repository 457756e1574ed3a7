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


def test_fgm_and_cosine_schedule_run(trained, tmp_path):
    res, base, _, _, data = trained
    out = onboard("toy", str(data), base=base, train=TrainSettings(epochs=2, batch_size=16, max_length=32,
                  fgm_epsilon=0.5, schedule="cosine"), output=str(tmp_path / "f"), register=False, probe=False, progress=False)
    assert out.manifest["training"]["fgm_epsilon"] == 0.5 and out.base_unchanged


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
                                  "--max-length", "32", "--no-register", "--output", str(tmp_path / "a"), "-q", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["task"] == "toy" and out["base_unchanged"] is True and 0 <= out["metrics"]["test_accuracy"] <= 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nope.csv"], "not found"),
        (["--data", "{toy}", "--text-col", "body"], "no column 'body'"),
        (["--data", "{toy}", "--rank", "0"], "rank == 0"),
        (["--data", "{toy}", "--base", "/nonexistent/model"], "not a model directory"),
        (["--data", "{toy}", "--no-register"], "--output"),
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
