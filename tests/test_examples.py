"""Run every example script end to end with tiny sizes (tiny BERT, toy CSVs)."""


from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from test_benchmark import TOPICS, write_task

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def csvs(tmp_path) -> list[str]:
    return [str(write_task(tmp_path / f"{n}.csv", c, seed=k)) for k, (n, c) in enumerate(TOPICS.items())]


def test_sequential_onboarding(tiny_base, csvs, tmp_path, capsys):
    R = _load("sequential_onboarding").main(["--data", ",".join(csvs), "--base", str(tiny_base), "--max-length", "16",
                                             "--out", str(tmp_path / "adapters")])
    assert len(R) == 3 and R[0][1] is None and R[2][2] is not None
    assert "after mood" in capsys.readouterr().out


def test_version_lookup(tiny_base, csvs, tmp_path, capsys):
    out = _load("version_lookup").main(["--data", csvs[0], "--task", "topics", "--base", str(tiny_base),
                                        "--registry", str(tmp_path / "reg"), "--max-length", "16"])
    assert out["versions"] == [1, 2] and out["production"] in (1, 2)
    assert "production -> v" in capsys.readouterr().out


def test_mlflow_comparison(tiny_base, csvs, tmp_path, capsys):
    rows = _load("mlflow_comparison").main(["--data", ",".join(csvs[:2]), "--base", str(tiny_base), "--max-length", "16",
                                            "--registry", str(tmp_path / "reg"), "--out", str(tmp_path / "report")])
    assert {r["strategy"] for r in rows} == {"adaptreg", "seq-lora", "probe"}
    assert (tmp_path / "report" / "report.md").is_file()
