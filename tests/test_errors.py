"""Clear one-line errors, before any work, instead of "unexpected ..." (issue #13 item 9).

Each mistake must give exit code 2 and one line that names the problem and the fix, before a
model is loaded or anything is written. Where a mistake used to be caught only after training
or inference, the test replaces the loading function with one that fails loudly, so a check
that comes too late shows up as a failure, not as a slow test.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys

import click
import pytest
from click.testing import CliRunner

from adaptreg.cli import main
from adaptreg.errors import BaseModelError, ConfigError

ON_LINUX_PROC = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def _cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _one_line_error(res, *needles: str, code: int = 2) -> str:
    """The run failed with ``code`` and one ``error:`` line containing every needle."""
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    assert "unexpected" not in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any base load (onboarding, merging, prediction, export) fails the test."""
    import adaptreg.base
    import adaptreg.compose.merge
    import adaptreg.compose.predict
    import adaptreg.train  # every module that binds load_base is imported before anything is patched

    def refuse(*a, **k):
        raise RuntimeError("a base model was loaded before the option was checked")

    for module in (adaptreg.base, adaptreg.train, adaptreg.compose.predict, adaptreg.compose.merge):
        monkeypatch.setattr(module, "load_base", refuse)


# --------------------------------------------------------------------------- registry with one task

@pytest.fixture(scope="module")
def one_task(tiny_base, tmp_path_factory):
    """A registry holding one task 'topic' (a random adapter, no training, no router) and the base."""
    from conftest import make_toy_rows
    from test_predict import fresh_registry, make_adapter, write_csv

    from adaptreg.base import load_base
    from adaptreg.data.tasks import load_task

    d = tmp_path_factory.mktemp("errors")
    lb = load_base(str(tiny_base))
    td = load_task(str(write_csv(d / "topic.csv", make_toy_rows(20))))
    reg = fresh_registry(d / "reg", tmp_path_factory.getbasetemp())
    reg.register(make_adapter(lb, "topic", td, d / "ad" / "topic"))
    return {"reg": d / "reg", "base": str(tiny_base), "dir": d}


# --------------------------------------------------------------------------- 1. --init-from selector

@pytest.mark.parametrize("spec, needle", [("a@x", "'x'"), ("a@", "after '@'"), ("a@0", "'0'"), ("@2", "task name")])
def test_onboard_bad_init_from_selector(spec, needle, tmp_path, toy_csv, tiny_base, no_model_loading):
    res = _cli("onboard", "t", "--data", toy_csv, "--base", tiny_base, "--init-from", spec,
               "--no-register", "--out", tmp_path / "out")
    line = _one_line_error(res, "--init-from", needle)
    assert "TASK@VERSION" in line
    assert not (tmp_path / "out").exists()


def test_selector_parsing():
    from adaptreg.selectors import parse_selector

    assert parse_selector("news") == ("news", None)
    assert parse_selector("news@3") == ("news", 3)
    assert parse_selector("news@v3") == ("news", 3)
    with pytest.raises(ConfigError, match=r"TASK@abc: 'abc' is not a version number"):
        parse_selector("TASK@abc", "TASK")


# --------------------------------------------------------------------------- 2, 3. merge selector and weights

def test_merge_bad_selector(tmp_path, no_model_loading):
    res = _cli("merge", "TASK@abc", "other", "--name", "m", "--registry", tmp_path / "reg")
    _one_line_error(res, "TASK@abc", "'abc'", "version")


def test_merge_adapters_bad_selector_in_the_library(tmp_path):
    from adaptreg.compose.merge import merge_adapters

    with pytest.raises(ConfigError, match="'abc' is not a version number"):
        merge_adapters(["TASK@abc", "other"], name="m", registry=str(tmp_path / "reg"), register=False,
                       output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, needle", [
    ("a,b", "'a' is not a number"), ("1,nan", "not finite"), ("inf,1", "not finite"),
    ("0.5,0.3,0.2", "3 weights for 2 tasks"), ("1,", "'' is not a number"),
])
def test_merge_bad_weights(weights, needle, tmp_path, no_model_loading):
    res = _cli("merge", "a", "b", "--name", "m", "--weights", weights, "--registry", tmp_path / "reg")
    _one_line_error(res, "--weights", needle)


def test_merge_adapters_rejects_non_finite_weights_in_the_library(tmp_path):
    from adaptreg.compose.merge import merge_adapters

    with pytest.raises(ConfigError, match="not finite"):
        merge_adapters(["a", "b"], name="m", weights=[float("nan"), 1.0], registry=str(tmp_path / "reg"))


# --------------------------------------------------------------------------- 4. output locations (folders --out, files --output)

def test_onboard_output_under_a_file_is_refused(tmp_path, toy_csv, tiny_base, no_model_loading):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    res = _cli("onboard", "t", "--data", toy_csv, "--base", tiny_base, "--no-register", "--out", blocker / "out")
    _one_line_error(res, "--out", str(blocker), "not a directory")


def test_onboard_existing_output_is_refused_before_training(tmp_path, toy_csv, tiny_base, no_model_loading):
    (tmp_path / "out").mkdir()
    res = _cli("onboard", "t", "--data", toy_csv, "--base", tiny_base, "--no-register", "--out", tmp_path / "out")
    _one_line_error(res, "--out", str(tmp_path / "out"), "already exists", "--overwrite")


@pytest.mark.skipif(not ON_LINUX_PROC, reason="needs a read-only /proc")
def test_onboard_unwritable_output_is_refused(toy_csv, tiny_base, no_model_loading):
    res = _cli("onboard", "t", "--data", toy_csv, "--base", tiny_base, "--no-register",
               "--out", "/proc/adaptreg-no-such/out")
    _one_line_error(res, "--out", "/proc", "cannot write")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_dir_is_refused_for_a_normal_user(tmp_path, toy_csv, tiny_base, no_model_loading):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = _cli("onboard", "t", "--data", toy_csv, "--base", tiny_base, "--no-register", "--out", ro / "out")
        _one_line_error(res, "--out", str(ro), "cannot write")
    finally:
        ro.chmod(0o755)


def test_merge_and_export_outputs_are_checked_first(tmp_path, no_model_loading):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    res = _cli("merge", "a", "b", "--name", "m", "--out", blocker / "m", "--registry", tmp_path / "reg")
    _one_line_error(res, "--out", str(blocker))
    res = _cli("export", "a", "--merged", blocker / "m", "--registry", tmp_path / "reg")
    _one_line_error(res, "--merged", str(blocker))


def test_bench_out_and_compare_plot_are_checked_first(tmp_path, no_model_loading):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    res = _cli("benchmark", "continual", "--tasks", "a,b", "--out", blocker / "report", "--no-mlflow")
    _one_line_error(res, "--out", str(blocker))
    res = _cli("compare", "--plot", tmp_path / "missing" / "c.png", "--registry", tmp_path / "reg")
    _one_line_error(res, "--plot", str(tmp_path / "missing"), "does not exist")
    assert not (tmp_path / "reg").exists()


def test_predict_output_in_a_missing_folder_is_refused(tmp_path, no_model_loading):
    res = _cli("predict", "--text", "x", "--output", tmp_path / "missing" / "p.csv", "--registry", tmp_path / "reg")
    _one_line_error(res, "--output", str(tmp_path / "missing"), "does not exist")
    res = _cli("predict", "--text", "x", "--output", tmp_path / "p.txt", "--registry", tmp_path / "reg")
    _one_line_error(res, "--output", ".csv or .jsonl")


def test_folder_outputs_create_missing_parents_and_nothing_before(tmp_path):
    """Decision: a missing parent of a *folder* output is fine (created when the result is written)."""
    from adaptreg._util import check_output_dir, check_output_file

    target = tmp_path / "a" / "b" / "out"
    assert check_output_dir(target, "--out") == target
    assert not (tmp_path / "a").exists()  # checking writes nothing
    with pytest.raises(ConfigError, match="does not exist"):
        check_output_file(tmp_path / "a" / "p.csv", "--output")


# --------------------------------------------------------------------------- 5. --data-home is a file

def test_data_home_that_is_a_file(tmp_path):
    f = tmp_path / "home.txt"
    f.write_text("not a folder")
    for args in (["data", "list"], ["data", "fetch", "bbc-news"], ["data", "split", "bbc-news", "--into", "2"]):
        res = _cli(*args, "--data-home", f)
        _one_line_error(res, str(f), "not a directory")
    res = _cli("data", "list", env={"ADAPTREG_DATA": str(f)})
    _one_line_error(res, str(f), "ADAPTREG_DATA")
    res = _cli("data", "list", "--data-home", f / "sub")
    _one_line_error(res, str(f), "not a directory")


# --------------------------------------------------------------------------- 6. pickle-only base

def test_pickle_only_base_is_refused_without_unpickling(tmp_path, tiny_base, toy_csv, monkeypatch):
    import torch

    pickled = tmp_path / "pickled-base"
    shutil.copytree(tiny_base, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called on a pickle file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    res = _cli("onboard", "t", "--data", toy_csv, "--base", pickled, "--no-register", "--out", tmp_path / "out")
    _one_line_error(res, str(pickled), "pytorch_model.bin", "safetensors")
    assert not (tmp_path / "out").exists()
    from adaptreg.base import load_base, resolve_base

    with pytest.raises(BaseModelError, match="safetensors only"):
        resolve_base(str(pickled))
    with pytest.raises(BaseModelError, match="safetensors only"):
        load_base(str(pickled))


def test_base_without_weights_is_refused(tmp_path, tiny_base):
    from adaptreg.base import resolve_base

    bare = tmp_path / "bare"
    shutil.copytree(tiny_base, bare, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(BaseModelError, match="no model.safetensors"):
        resolve_base(str(bare))


# --------------------------------------------------------------------------- 7. --threshold

@pytest.mark.parametrize("value", ["nan", "-1", "0", "-inf"])
def test_predict_bad_threshold_is_refused_first(value, tmp_path, no_model_loading):
    res = _cli("predict", "--text", "x", "--threshold", value, "--registry", tmp_path / "reg")
    _one_line_error(res, "--threshold", "> 0")
    assert not (tmp_path / "reg").exists()  # not even the registry was opened


@pytest.mark.parametrize("cmd", [["route", "add", "a"], ["route", "eval"]])
def test_route_bad_threshold_is_refused_first(cmd, tmp_path, no_model_loading):
    res = _cli(*cmd, "--threshold", "nan", "--registry", tmp_path / "reg")
    _one_line_error(res, "--threshold", "> 0")
    assert not (tmp_path / "reg").exists()


# --------------------------------------------------------------------------- 8. long CSV fields

def test_csv_fields_longer_than_the_csv_default_are_read(tmp_path):
    from adaptreg.data.tasks import read_records, read_rows

    old = csv.field_size_limit(131072)  # the interpreter's default, whatever ran before
    try:
        long_text = "word " * 40_000  # 200,000 characters
        p = tmp_path / "long.csv"
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerow([long_text, "a"])
            w.writerow(["short", "b"])
        records, cols = read_records(p)
        assert cols == ["text", "label"] and records[0]["text"] == long_text
        assert read_rows(p, "text", "label")[1] == ("short", "b")
    finally:
        csv.field_size_limit(max(old, csv.field_size_limit()))


# --------------------------------------------------------------------------- 9. predict on an empty registry

def test_predict_on_a_registry_without_tasks(tmp_path, tmp_path_factory, tiny_base, no_model_loading):
    from test_predict import fresh_registry

    reg = fresh_registry(tmp_path / "reg", tmp_path_factory.getbasetemp())
    want = f"no tasks in the registry at {reg.location.display}: onboard one with `adaptreg onboard`"
    for extra in ([], ["--base", str(tiny_base)]):
        res = _cli("predict", "--text", "x", "--registry", tmp_path / "reg", *extra)
        assert _one_line_error(res) == f"error: {want}"


# --------------------------------------------------------------------------- 10. predict --output overwrite

def test_predict_will_not_overwrite_its_input_or_any_file(tmp_path, no_model_loading):
    inp = tmp_path / "in.csv"
    inp.write_text("text\nsport match\n", encoding="utf-8")
    before = inp.read_bytes()
    res = _cli("predict", "--data", inp, "--output", inp, "--registry", tmp_path / "reg")
    _one_line_error(res, str(inp), "--data input", "--overwrite")
    assert inp.read_bytes() == before
    other = tmp_path / "old.jsonl"
    other.write_text("{}\n")
    res = _cli("predict", "--data", inp, "--output", other, "--registry", tmp_path / "reg")
    _one_line_error(res, str(other), "already exists", "--overwrite")
    res = _cli("predict", "--data", inp, "--output", tmp_path, "--registry", tmp_path / "reg")
    _one_line_error(res, "is a directory")


def test_predict_overwrite_replaces_the_file(one_task, tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text("old\n")
    res = _cli("predict", "--text", "sport match", "--output", out, "--overwrite", "--registry", one_task["reg"],
               "--base", one_task["base"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["topic"]
    assert not [p for p in tmp_path.iterdir() if p.name != "p.jsonl"]  # no temp file left


# --------------------------------------------------------------------------- 11. --json never prints NaN

def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_json_output_maps_non_finite_numbers_to_null():
    import numpy as np

    from adaptreg._util import to_json
    from adaptreg.cli._common import emit

    data = {"a": float("nan"), "b": [1.5, float("inf"), -float("inf")], "c": np.float32("nan"),
            "d": np.array([1.0, np.nan]), "e": {"f": (float("nan"),)}, "g": np.float64(2.0)}

    @click.command()
    def cmd() -> None:
        emit(data, True)

    res = CliRunner().invoke(cmd, [])
    assert res.exit_code == 0, res.output
    got = _strict_json(res.stdout)
    assert got == {"a": None, "b": [1.5, None, None], "c": None, "d": [1.0, None], "e": {"f": [None]}, "g": 2.0}
    assert _strict_json(to_json(data)) == got


# --------------------------------------------------------------------------- 12. empty text with --task

def test_predict_empty_text_is_unknown(one_task):
    args = ["--text", "", "--text", "   ", "--text", "sport match goal", "--json", "--registry", one_task["reg"],
            "--base", one_task["base"]]
    for extra in (["--task", "topic"], []):  # named task; the single task without a router
        res = _cli("predict", *args, *extra)
        assert res.exit_code == 0, res.output
        rows = _strict_json(res.stdout)
        assert [(r["task"], r["label"], r["confidence"]) for r in rows[:2]] == [("unknown", "unknown", None)] * 2
        assert rows[2]["task"] == "topic" and rows[2]["label"] != "unknown"


def test_predictor_empty_text_is_unknown_in_the_library(one_task):
    from adaptreg.compose.predict import Predictor

    pred = Predictor(str(one_task["reg"]), base=one_task["base"], router=False)
    out = pred.predict(["", "\t\n", "sport"], task="topic")
    assert [r["label"] for r in out] == ["unknown", "unknown", out[2]["label"]] and out[2]["label"] != "unknown"
    assert not math.isnan(out[2]["confidence"])

