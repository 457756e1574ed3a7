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
