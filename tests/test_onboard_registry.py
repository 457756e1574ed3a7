"""The onboarding issue's flow end to end through the CLI: onboard twice, promote, look up."""

from __future__ import annotations

import json

from click.testing import CliRunner

from adaptreg.cli import main


def test_onboard_twice_promote_lookup(tiny_base, toy_csv, tmp_path):
    reg = str(tmp_path / "registry")
    run = CliRunner()
    common = ["--data", str(toy_csv), "--base", str(tiny_base), "--epochs", "1", "--max-length", "32",
              "--registry", reg, "-q", "--json"]
    first = run.invoke(main, ["onboard", "news", *common])
    assert first.exit_code == 0, first.output
    second = run.invoke(main, ["onboard", "news", *common, "--seed", "1"])
    assert second.exit_code == 0, second.output
    assert [json.loads(r.stdout)["version"] for r in (first, second)] == [1, 2]

    listed = json.loads(run.invoke(main, ["list", "--registry", reg, "--json"]).stdout)
    assert [t["task"] for t in listed] == ["news"]

    assert run.invoke(main, ["promote", "news", "1", "--alias", "production", "--registry", reg]).exit_code == 0
    looked = run.invoke(main, ["lookup", "news", "--alias", "production", "--registry", reg, "--json"])
    assert looked.exit_code == 0, looked.output
    rec = json.loads(looked.stdout)
    assert rec["version"] == 1
    assert rec["metrics"]["test_accuracy"] == json.loads(first.stdout)["metrics"]["test_accuracy"]
    assert rec["base"]["fingerprint"] == json.loads(first.stdout)["base"]["fingerprint"]
    assert (tmp_path / "registry" / "mlflow.db").is_file()

    latest = json.loads(run.invoke(main, ["lookup", "news", "--version", "2", "--registry", reg, "--json"]).stdout)
    assert latest["version"] == 2 and latest["path"] != rec["path"]


def test_init_from_starts_from_the_registered_adapter(tiny_base, toy_csv, tmp_path):
    """--init-from copies the parent's LoRA weights into the new adapter and records the lineage."""
    import torch
    from safetensors.torch import load_file

    reg = str(tmp_path / "registry")
    run = CliRunner()
    common = ["--data", str(toy_csv), "--base", str(tiny_base), "--epochs", "1", "--max-length", "32",
              "--registry", reg, "-q", "--json", "--no-route", "--no-probe"]
    parent = run.invoke(main, ["onboard", "domain", *common])
    assert parent.exit_code == 0, parent.output
    # a learning rate of 1e-12 leaves the starting point in place: the child's adapter is the parent's
    child = run.invoke(main, ["onboard", "child", *common, "--init-from", "domain@1", "--lr", "1e-12"])
    assert child.exit_code == 0, child.output
    fresh = run.invoke(main, ["onboard", "fresh", *common, "--lr", "1e-12"])
    weights = {name: load_file(f"{json.loads(r.stdout)['artifact_dir']}/adapter_model.safetensors")
               for name, r in (("parent", parent), ("child", child), ("fresh", fresh))}
    lora_b = [k for k in weights["parent"] if "lora_B" in k]
    assert lora_b and all(weights["parent"][k].abs().sum() > 0 for k in lora_b)  # the parent learnt something
    for k, v in weights["parent"].items():
        torch.testing.assert_close(weights["child"][k], v, atol=1e-6, rtol=0)
    assert all(weights["fresh"][k].abs().max() < 1e-6 for k in lora_b)  # a fresh start has B = 0
    got = json.loads(child.stdout)
    assert got["adapter"]["init_from"] == "domain@1" and got["parents"] == [{"task": "domain", "version": 1}]

    wrong = run.invoke(main, ["onboard", "other", *common, "--init-from", "domain", "--rank", "4"])
    assert wrong.exit_code != 0 and "use the same --rank" in wrong.output
