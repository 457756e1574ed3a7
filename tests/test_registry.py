"""The registry on MLflow (real MLflow, SQLite and a real server; no mocks).

Fast tests build real PEFT adapter artifacts on the tiny BERT; the ``slow`` test starts
``mlflow server`` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from adaptreg import artifact
from adaptreg.errors import ConfigError, IncompatibleBaseError, IntegrityError, NotFoundError, RegistryError
from adaptreg.registry import Registry, resolve_location

LABELS = ["business", "sport", "tech"]
# A 1x1 PNG: the registry logs confusion_matrix.png when the artifact has one.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def build_artifact(directory: Path, base_dir: Path, fingerprint: str, *, task: str = "news", seed: int = 0,
                   acc: float = 0.8, rank: int = 4) -> Path:
    """A real adapter artifact: PEFT LoRA on the tiny BERT, a head, labels and a manifest."""
    import peft
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    model = peft.get_peft_model(BertModel.from_pretrained(str(base_dir), add_pooling_layer=False),
                                peft.LoraConfig(r=rank, target_modules=["query", "value"], init_lora_weights=False))
    directory.mkdir(parents=True)
    model.save_pretrained(str(directory))
    artifact.save_head(directory, torch.nn.Linear(32, len(LABELS)), LABELS)
    (directory / "confusion_matrix.png").write_bytes(PNG)
    manifest = {
        "adaptreg_version": "0.1.0", "task": task, "created_at": "2026-01-01T00:00:00+00:00",
        "base": {"id": str(base_dir), "fingerprint": fingerprint, "model_type": "bert", "hidden_size": 32,
                 "num_parameters": 100000},
        "data": {"fingerprint": "sha256:" + "ab" * 32, "source": "toy", "n_train": 60, "n_val": 15, "n_test": 15,
                 "duplicates_removed": 0},
        "labels": LABELS,
        "adapter": {"kind": "lora", "rank": rank, "alpha": 2 * rank, "dropout": 0.1, "targets": ["query", "value"],
                    "rslora": False, "init_from": None},
        "training": {"epochs": 2, "batch_size": 16, "lr": 5e-4, "schedule": "linear", "warmup_ratio": 0.1,
                     "max_length": 64, "seed": seed, "epochs_run": 2, "best_epoch": 2},
        "history": [{"epoch": 1, "train_loss": 1.0, "val_accuracy": acc - 0.2, "val_macro_f1": acc - 0.25},
                    {"epoch": 2, "train_loss": 0.6, "val_accuracy": acc, "val_macro_f1": acc - 0.05}],
        "metrics": {"test_accuracy": acc, "test_macro_f1": acc - 0.05, "val_accuracy": acc,
                    "probe_test_accuracy": 0.6, "probe_test_macro_f1": 0.55, "trainable_params": 1024,
                    "trainable_pct": 1.0, "adapter_bytes": 6000, "train_seconds": 1.5 + seed,
                    "train_examples_per_s": 40.0},
        "report": {"confusion_matrix": [[5, 0, 0], [0, 5, 0], [0, 0, 5]], "per_class": {}},
        "parents": [],
        "libraries": {},
    }
    artifact.write_files_checksums(directory, manifest)
    return directory


@pytest.fixture(scope="session")
def base_fp(tiny_base) -> str:
    from adaptreg.base import load_base

    return load_base(str(tiny_base)).fingerprint


@pytest.fixture(scope="session")
def arts(tmp_path_factory, tiny_base, base_fp) -> dict[str, Path]:
    """Three artifacts: a (acc 0.8), b (acc 0.9), c (acc 0.7, rank 8)."""
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "a": build_artifact(root / "a", tiny_base, base_fp, seed=0, acc=0.8),
        "b": build_artifact(root / "b", tiny_base, base_fp, seed=1, acc=0.9),
        "c": build_artifact(root / "c", tiny_base, base_fp, seed=2, acc=0.7, rank=8),
    }


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow database: creating the tables takes seconds, copying it does not."""
    root = tmp_path_factory.mktemp("template")
    Registry(root).client  # noqa: B018 - creates the tables
    return root / "mlflow.db"


def fresh_location(root: Path, empty_db: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copyfile(empty_db, root / "mlflow.db")
    return root


@pytest.fixture
def reg(tmp_path, empty_db) -> Registry:
    return Registry(fresh_location(tmp_path / "reg", empty_db), cache_dir=tmp_path / "cache")


@pytest.fixture
def reg2(reg, arts) -> Registry:
    """A registry holding news v1 (acc 0.8) and v2 (acc 0.9)."""
    reg.register(arts["a"])
    reg.register(arts["b"])
    return reg


def _cli(*args: str, registry: Registry | Path | str | None = None):
    from click.testing import CliRunner

    from adaptreg.cli import main

    argv = list(args)
    if registry is not None:
        argv += ["--registry", registry.location.display if isinstance(registry, Registry) else str(registry)]
    return CliRunner().invoke(main, argv)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


# -- locations ----------------------------------------------------------------------------------


def test_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTREG_REGISTRY", str(tmp_path / "envreg"))
    loc = Registry().location
    assert loc.kind == "dir" and loc.db_path == tmp_path / "envreg" / "mlflow.db"
    assert loc.uri == f"sqlite:///{tmp_path}/envreg/mlflow.db"
    assert loc.artifact_root == (tmp_path / "envreg" / "artifacts").as_uri()
    monkeypatch.delenv("ADAPTREG_REGISTRY")
    monkeypatch.chdir(tmp_path)
    assert resolve_location().db_path == tmp_path / "registry" / "mlflow.db"
    assert resolve_location("http://127.0.0.1:5000/").uri == "http://127.0.0.1:5000"
    loc = resolve_location(f"sqlite:///{tmp_path}/x.db")
    assert loc.kind == "sqlite" and loc.db_path == tmp_path / "x.db"
    assert resolve_location("postgresql://u:secret@h/db").display == "postgresql://u:***@h/db"
    with pytest.raises(ConfigError, match="plain file stores"):
        resolve_location("file:///tmp/mlruns")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        resolve_location(tmp_path / "afile")


def test_empty_registry_reads_create_nothing(tmp_path):
    missing = tmp_path / "nothing-here"
    reg = Registry(missing)
    assert reg.list_tasks() == []
    with pytest.raises(NotFoundError, match="no task 'news'.*tasks: none yet"):
        reg.lookup("news")
    res = _cli("list", "--json", registry=missing)
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    res = _cli("compare", "--json", registry=missing)
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    assert not missing.exists()


# -- register, lookup, promote --------------------------------------------------------------------


def test_register_twice_gives_versions_with_metrics(reg, arts, base_fp):
    r1 = reg.register(arts["a"])
    r2 = reg.register(arts["b"])
    assert (r1["version"], r2["version"]) == (1, 2)
    assert r2["status"] == "ready" and r2["metrics"]["test_accuracy"] == 0.9
    assert r2["metrics"]["trainable_params"] == 1024 and isinstance(r2["metrics"]["trainable_params"], int)
    assert r2["base"] == {"id": str(Path(artifact.read_manifest(arts["b"])["base"]["id"])), "fingerprint": base_fp}
    assert r2["adapter"] == {"kind": "lora", "rank": 4, "targets": ["query", "value"]}
    assert r2["adapter_sha256"] == artifact.read_manifest(arts["b"])["files"]["adapter_model.safetensors"]
    stored = Path(r2["path"])
    assert stored.is_relative_to(reg.location.db_path.parent / "artifacts")
    assert artifact.verify(stored)["task"] == "news"
    assert not (stored / "confusion_matrix.png").exists()

    client = reg.client
    run = client.get_run(r2["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["adapter.rank"] == "4" and run.data.params["training.lr"] == "0.0005"
    assert run.data.params["data.fingerprint"] == "sha256:" + "ab" * 32
    assert run.data.metrics["test_accuracy"] == 0.9
    assert [(m.step, m.value) for m in client.get_metric_history(r2["run_id"], "history/val_accuracy")] == [
        (1, pytest.approx(0.7)), (2, 0.9)]
    assert run.data.tags["adaptreg.model_version"] == "2"
    plots = [f.path for f in client.list_artifacts(r2["run_id"], "plots")]
    assert plots == ["plots/confusion_matrix.png"]
    mv = client.get_model_version("news", "2")
    assert mv.tags["adaptreg.status"] == "ready" and mv.source == r2["source"]


def test_promote_and_selectors(reg2):
    assert reg2.lookup("news")["version"] == 2  # no production alias: latest ready
    rec = reg2.promote("news", 1, "production")
    assert rec["aliases"] == ["production"]
    assert reg2.lookup("news", alias="production")["version"] == 1
    assert reg2.lookup("news")["version"] == 1  # production wins over latest
    assert reg2.lookup("news", version=2)["version"] == 2
    assert reg2.lookup("news", best="test_accuracy")["version"] == 2
    assert reg2.lookup("news", best="train_seconds")["version"] == 1  # lower is better for seconds
    with pytest.raises(NotFoundError, match=r"no alias 'prod' for task 'news' \(aliases: production\)"):
        reg2.lookup("news", alias="prod")
    with pytest.raises(NotFoundError, match=r"task 'news' has no version 7 \(versions: 1, 2\)"):
        reg2.lookup("news", version=7)
    with pytest.raises(NotFoundError, match=r"no task 'sport'.*\(tasks: news\)"):
        reg2.lookup("sport")
    with pytest.raises(NotFoundError, match="has metric 'bleu'"):
        reg2.lookup("news", best="bleu")
    with pytest.raises(ConfigError, match="at most one"):
        reg2.lookup("news", version=1, alias="production")
    with pytest.raises(ConfigError, match="invalid alias"):
        reg2.promote("news", 1, "v2")
    reg2.promote("news", 2, "production")  # moving an alias
    assert reg2.lookup("news")["version"] == 2 and reg2.lookup("news", version=1)["aliases"] == []


def test_show_diff_compare_archive(reg2, arts, tmp_path):
    reg2.register(arts["c"], task="sst2")
    reg2.promote("news", 1, "production")
    shown = reg2.show("news")
    assert [v["version"] for v in shown["versions"]] == [2, 1] and shown["aliases"] == {"production": 1}
    one = reg2.show("news", alias="production")
    assert one["version"] == 1 and one["params"]["adapter.kind"] == "lora" and one["run_status"] == "FINISHED"

    d = reg2.diff("news", 1, 2)
    by_name = {r["name"]: r for r in d["params"]}
    assert by_name["training.seed"] == {"name": "training.seed", "v1": "0", "v2": "1", "differs": True}
    assert by_name["adapter.rank"]["differs"] is False
    assert {r["name"]: r for r in d["metrics"]}["test_accuracy"]["v2"] == 0.9
    assert {r["name"] for r in d["tags"] if r["differs"]} >= {"adaptreg.adapter_sha256", "adaptreg.metric.test_accuracy"}

    rows = reg2.compare_rows()
    assert [(r["task"], r["version"]) for r in rows] == [("news", 2), ("news", 1), ("sst2", 1)]
    assert rows[1]["aliases"] == "production" and rows[2]["rank"] == 8
    assert [r["version"] for r in reg2.compare_rows(["news"], metric="train_seconds")] == [2, 1]
    csv_text = reg2.compare(fmt="csv")
    assert csv_text.splitlines()[0].startswith("task,version,aliases,kind,rank,epochs,serves,test_accuracy")
    assert len(csv_text.splitlines()) == 4
    png = tmp_path / "cmp.png"
    assert "news" in reg2.compare(fmt="table", plot=png) and png.stat().st_size > 1000
    with pytest.raises(NotFoundError, match="no version has metric 'bleu'"):
        reg2.compare(metric="bleu")

    rec = reg2.archive("news", 1)
    assert rec["archived"] and rec["dropped_aliases"] == ["production"] and rec["aliases"] == []
    assert reg2.lookup("news")["version"] == 2  # alias gone: latest ready, unarchived
    reg2.archive("news", 2)
    with pytest.raises(NotFoundError, match="no ready version"):
        reg2.lookup("news")
    with pytest.raises(NotFoundError, match="has metric"):
        reg2.lookup("news", best="test_accuracy")
    assert reg2.lookup("news", version=1)["archived"] is True  # an explicit pin still works
    with pytest.raises(RegistryError, match="archived"):
        reg2.promote("news", 1, "production")
    assert [t["task"] for t in reg2.list_tasks()] == ["sst2"]
    assert {t["task"]: t["latest"] for t in reg2.list_tasks(all=True)} == {"news": None, "sst2": 1}
    assert [r["version"] for r in reg2.versions("news", all=True)] == [2, 1]
    assert reg2.compare_rows(["news"]) == [] and len(reg2.compare_rows(["news"], all=True)) == 2


def test_cli_json_and_human(reg2, tmp_path):
    res = _cli("promote", "news", "1", "--alias", "production", registry=reg2)
    assert res.exit_code == 0, res.output
    assert "alias production -> version 1" in res.stdout
    res = _cli("lookup", "news", "--alias", "production", "--json", registry=reg2)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["version"] == 1 and Path(rec["path"]).is_dir() and rec["metrics"]["test_accuracy"] == 0.8
    res = _cli("lookup", "news", "--best", "test_accuracy", "--path", registry=reg2)
    assert res.exit_code == 0 and res.stdout.strip() == reg2.lookup("news", version=2)["path"]
    res = _cli("lookup", "news", "--version", "2", "--verify", registry=reg2)
    assert res.exit_code == 0 and res.stdout.startswith("news version 2")
    rows = json.loads(_cli("list", "--json", registry=reg2).stdout)
    assert rows == [{"task": "news", "latest": 2, "versions": 2, "aliases": {"production": 1},
                     "best_test_accuracy": 0.9, "updated_at": rows[0]["updated_at"]}]
    assert "news" in _cli("list", registry=reg2).stdout
    shown = json.loads(_cli("show", "news", "--json", registry=reg2).stdout)
    assert [v["version"] for v in shown["versions"]] == [2, 1]
    assert json.loads(_cli("show", "news", "--version", "1", "--json", registry=reg2).stdout)["params"]["task"] == "news"
    diff = json.loads(_cli("diff", "news", "1", "2", "--changed", "--json", registry=reg2).stdout)
    assert diff["params"] and all(r["differs"] for r in diff["params"])
    human = _cli("diff", "news", "1", "2", registry=reg2).stdout
    assert "== params" in human and any(line.startswith("*") and "training.seed" in line for line in human.splitlines())
    as_json = _cli("compare", "--json", registry=reg2)
    rows = json.loads(as_json.stdout)
    assert [r["version"] for r in rows] == [2, 1]
    # the old spelling --format json: the same JSON, after one deprecation line on stderr
    old = _cli("compare", "--format", "json", registry=reg2)
    assert old.exit_code == 0 and old.stdout == as_json.stdout
    assert old.stderr.strip().splitlines() == ["warning: --format json is deprecated; use --json"]
    assert _cli("compare", "--format", "csv", registry=reg2).stdout.startswith("task,version")
    res = _cli("archive", "news", "1", "--yes", "--json", registry=reg2)
    assert res.exit_code == 0 and json.loads(res.stdout)["archived"] is True

    res = _cli("lookup", "news", "--alias", "prod", registry=reg2)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip() == "error: no alias 'prod' for task 'news' (aliases: none; set one with `adaptreg promote`)"
    res = _cli("lookup", "bad/name", registry=reg2)
    assert res.exit_code == 2 and "task name 'bad/name' is invalid" in res.stderr
    res = _cli("archive", "news", "2", registry=reg2)  # asks; no input: aborts
    assert res.exit_code != 0 and reg2.lookup("news", version=2)["archived"] is False


def test_cli_lookup_does_not_import_mlflow(reg2):
    code = ("import sys, json\nfrom adaptreg.cli import main\n"
            "try:\n    main(['lookup', 'news', '--json', '--registry', sys.argv[1]])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "assert 'mlflow' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n")
    out = subprocess.run([sys.executable, "-c", code, reg2.location.display], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 2


# -- the sqlite fast path -------------------------------------------------------------------------


def test_fast_path_matches_mlflow_client(reg2, arts):
    reg2.register(arts["c"], task="sst2")
    reg2.promote("news", 1, "production")
    reg2.promote("news", 2, "staging")
    reg2.archive("sst2", 1)
    slow = Registry(reg2.location.display, cache_dir=reg2.cache_dir, fast=False)
    assert reg2._fast_reader is not None and slow._fast_reader is None
    from adaptreg.registry.store import ClientReader

    fast_r, client_r = reg2._fast_reader, ClientReader(slow.client)
    assert fast_r.task_names() == client_r.task_names() == ["news", "sst2"]
    for task in ("news", "sst2", "missing"):
        assert fast_r.aliases(task) == client_r.aliases(task)
        assert fast_r.versions(task) == client_r.versions(task)
        assert fast_r.latest_ready(task) == client_r.latest_ready(task)
        for v in (1, 2, 3):
            assert fast_r.version(task, v) == client_r.version(task, v)
    for sel in ({}, {"alias": "production"}, {"alias": "staging"}, {"version": 1}, {"best": "test_macro_f1"}):
        assert reg2.lookup("news", **sel) == slow.lookup("news", **sel)
    assert reg2.list_tasks(all=True) == slow.list_tasks(all=True)
    assert reg2.compare_rows(all=True) == slow.compare_rows(all=True)


# -- integrity and compatibility ----------------------------------------------------------------


def test_tampered_and_truncated_files_are_refused(reg2, base_fp):
    path = Path(reg2.lookup("news", version=1)["path"])
    assert reg2.load("news", version=1, base=base_fp)["manifest"]["task"] == "news"
    _flip_byte(path / "adapter_model.safetensors")
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors failed its sha256 check"):
        reg2.load("news", version=1)
    with pytest.raises(IntegrityError, match=r"adapter_model\.safetensors"):
        reg2.lookup("news", version=1, verify=True)
    res = _cli("lookup", "news", "--version", "1", "--verify", registry=reg2)
    assert res.exit_code == 2 and "adapter_model.safetensors failed its sha256 check" in res.stderr

    path2 = Path(reg2.lookup("news", version=2)["path"])
    head = path2 / "head.safetensors"
    head.chmod(0o644)
    head.write_bytes(head.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match=r"head\.safetensors failed its sha256 check"):
        reg2.load("news", version=2)

    # Rewriting the manifest to match tampered weights is caught by the registry's own record.
    manifest = artifact.read_manifest(path2)
    artifact.write_files_checksums(path2, manifest)
    artifact.verify(path2)  # self-consistent now...
    with pytest.raises(IntegrityError, match=r"manifest\.json failed its sha256 check against the registry"):
        reg2.load("news", version=2)  # ...but not what was registered

    (path2 / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(IntegrityError, match="only safetensors"):
        reg2.load("news", version=2)


def test_missing_store_files_are_reported(reg2):
    path = Path(reg2.lookup("news", version=2)["path"])
    shutil.rmtree(path)
    with pytest.raises(IntegrityError, match="are missing"):
        reg2.lookup("news", version=2)


def test_wrong_base_is_refused(reg2, other_tiny_base, base_fp):
    from adaptreg.base import load_base

    other = load_base(str(other_tiny_base))
    assert other.fingerprint != base_fp
    with pytest.raises(IncompatibleBaseError) as err:
        reg2.load("news", base=other)
    msg = str(err.value)
    assert base_fp[:19] in msg and other.fingerprint[:19] in msg and str(other_tiny_base) in msg


def test_register_refuses_bad_input(reg, arts, tmp_path):
    for bad in ("a/b", "../x", "", "has space", "x" * 65, ".hidden", "a\\b"):
        with pytest.raises(ConfigError, match="task name"):
            reg.register(arts["a"], task=bad)
        with pytest.raises(ConfigError, match="task name"):
            reg.lookup(bad)
    copy = tmp_path / "pickled"
    shutil.copytree(arts["a"], copy)
    (copy / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(IntegrityError, match=r"pickle-format weights \(adapter_model\.bin\)"):
        reg.register(copy)
    broken = tmp_path / "broken"
    shutil.copytree(arts["a"], broken)
    _flip_byte(broken / "head.safetensors")
    with pytest.raises(IntegrityError, match="head.safetensors"):
        reg.register(broken)
    with pytest.raises(ConfigError, match="not a directory"):
        reg.register(tmp_path / "nope")
    assert reg.list_tasks(all=True) == []


def test_extra_artifacts_and_task_override(reg, arts, tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    rec = reg.register(arts["a"], task="news.v2-test_1", extra_artifacts=[note])
    assert rec["task"] == "news.v2-test_1" and rec["version"] == 1
    assert [f.path for f in reg.client.list_artifacts(rec["run_id"], "extra")] == ["extra/notes.txt"]


# -- concurrency and faults ------------------------------------------------------------------------

_WORKER = """
import os, sys, time
from pathlib import Path
from adaptreg.registry import Registry
reg = Registry(sys.argv[1])
barrier, n = Path(sys.argv[3]), int(sys.argv[4])
(barrier / str(os.getpid())).touch()
deadline = time.time() + 60
while len(list(barrier.iterdir())) < n and time.time() < deadline:
    time.sleep(0.01)
print(reg.register(sys.argv[2])["version"])
"""


def test_concurrent_registrations_get_distinct_versions(tmp_path, arts):
    location = tmp_path / "reg"  # fresh: the processes also race to create the database
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    n = 4
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(location), str(arts["ab"[i % 2]]), str(barrier), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(n)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sorted(int(out.strip().splitlines()[-1]) for out, _ in outs) == [1, 2, 3, 4]
    reg = Registry(location)
    versions = reg.versions("news")
    assert [v["version"] for v in versions] == [4, 3, 2, 1] and all(v["status"] == "ready" for v in versions)
    assert len({v["run_id"] for v in versions}) == 4
    for v in versions:
        reg.load("news", version=v["version"])  # every one complete and verified


# Fault injection lives here, in the tests: the child process sets the store's hook to SIGKILL
# itself at one named step of the write path.
_CRASH = """import os, signal, sys
from adaptreg.registry import Registry, store
store.fault_hook = lambda where: os.kill(os.getpid(), signal.SIGKILL) if where == sys.argv[3] else None
Registry(sys.argv[1]).register(sys.argv[2])
"""


def _crashing_register(location: Path, art: Path, where: str) -> int:
    # the killed child cannot remove its temporary files (its ``finally`` never runs): give it a
    # temporary directory of its own, removed here
    with tempfile.TemporaryDirectory(prefix="adaptreg-test-killed-") as tmp:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "TMPDIR": tmp}
        return subprocess.run([sys.executable, "-c", _CRASH, str(location), str(art), where], env=env,
                              capture_output=True, timeout=120).returncode


def test_killed_registration_leaves_nothing_visible(tmp_path, arts, empty_db):
    location = fresh_location(tmp_path / "reg", empty_db)
    assert _crashing_register(location, arts["a"], "after_version") == -9
    reg = Registry(location)
    assert reg.list_tasks() == []
    with pytest.raises(NotFoundError, match="no ready version"):
        reg.lookup("news")
    with pytest.raises(NotFoundError, match="registration did not complete"):
        reg.lookup("news", version=1)
    pending = reg.versions("news", all=True)
    assert [(v["version"], v["status"]) for v in pending] == [(1, "pending")]
    assert reg.client.get_run(pending[0]["run_id"]).info.status != "FINISHED"
    with pytest.raises(NotFoundError):
        reg.promote("news", 1, "production")

    assert _crashing_register(location, arts["b"], "after_artifacts") == -9  # files copied, no version yet
    assert [v["version"] for v in reg.versions("news", all=True)] == [1]

    rec = reg.register(arts["b"])
    assert rec["version"] == 2 and rec["status"] == "ready"
    assert reg.lookup("news")["version"] == 2
    assert [t["latest"] for t in reg.list_tasks()] == [2]


# -- a real tracking server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until an ``mlflow server`` answers ``/health``; fail with its log if it dies or times out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("mlflow server did not start:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.5)


def _stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """The server runs its workers in its own session: stop the whole group, SIGTERM first, then
    after ``grace`` seconds SIGKILL for the leader or workers that outlived it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=15)


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc, tmp_path / "server.log")
        yield url
    finally:
        _stop_group(proc)
        log.close()


@pytest.mark.slow
def test_registry_on_a_tracking_server(mlflow_server, arts, tmp_path, base_fp):
    reg = Registry(mlflow_server, cache_dir=tmp_path / "cache")
    assert reg.location.kind == "http" and reg._fast_reader is None
    r1 = reg.register(arts["a"])
    r2 = reg.register(arts["b"])
    assert (r1["version"], r2["version"]) == (1, 2)
    assert r2["source"].startswith("mlflow-artifacts:")
    assert reg.lookup("news")["version"] == 2 and reg.lookup("news", best="test_accuracy")["version"] == 2
    reg.promote("news", 1, "production")

    fresh = Registry(mlflow_server, cache_dir=tmp_path / "cache2")  # nothing cached: downloads
    rec = fresh.lookup("news", alias="production")
    assert rec["version"] == 1 and rec["aliases"] == ["production"]
    path = Path(rec["path"])
    assert path.is_relative_to(tmp_path / "cache2") and path.name == rec["manifest_sha256"]
    assert fresh.load("news", alias="production", base=base_fp)["manifest"]["metrics"]["test_accuracy"] == 0.8
    assert fresh.lookup("news")["version"] == 1
    assert [t["task"] for t in fresh.list_tasks()] == ["news"]
    _flip_byte(path / "adapter_model.safetensors")
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        fresh.load("news", alias="production")
    res = _cli("lookup", "news", "--version", "2", "--json", registry=mlflow_server)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["version"] == 2
