"""Registry integrity (issue #13): reserved names, a registry folder that can be copied or moved,
one write path for the router, alias/archive consistency, nothing broken marked ready, the
router checked against the registry, clear errors for a damaged or missing registry.

Real MLflow on SQLite and real PEFT files; each test fails on the code before its fix.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adaptreg import artifact
from adaptreg.errors import ConfigError, IntegrityError, RegistryError
from adaptreg.registry import Registry
from test_registry import _cli, arts, base_fp, build_artifact, empty_db, fresh_location, reg, reg2  # noqa: F401


def _router(seed: int = 0):
    from adaptreg.compose.router import Router

    rng = np.random.default_rng(seed)
    r = Router(layers=(-1,), surface=0)
    r.add_task("news@1", rng.normal(size=(20, 8)), rng.integers(0, 2, 20))
    return r


# -- 1. reserved names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adaptreg-router", "ADAPTREG-Router", "adaptreg-continual", "adaptreg"])
def test_reserved_names_are_refused_before_any_work(name, reg, arts, tmp_path, toy_csv):
    with pytest.raises(ConfigError, match="reserved"):
        artifact.validate_task_name(name)
    with pytest.raises(ConfigError, match="reserved"):
        reg.register(arts["a"], task=name)
    assert reg.list_tasks() == []
    where = tmp_path / "untouched"
    res = _cli("onboard", name, "--data", str(toy_csv), "--base", "minilm", registry=where)
    assert res.exit_code != 0 and "reserved" in res.output.strip().splitlines()[-1] and "Traceback" not in res.output
    assert not where.exists()  # refused before the registry was opened
    from adaptreg.compose.merge import merge_adapters

    with pytest.raises(ConfigError, match="reserved"):
        merge_adapters([str(arts["a"]), str(arts["b"])], name=name, output=str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


# -- 2. a registry folder that can be copied or moved -----------------------------------------


def test_copied_then_moved_registry_reads_and_writes_in_its_new_place(tmp_path, arts, empty_db, tiny_base, base_fp):
    from adaptreg.compose.predict import Predictor
    from adaptreg.compose.router import load_router, register_router

    original = fresh_location(tmp_path / "registry", empty_db)
    reg = Registry(original, cache_dir=tmp_path / "cache")
    reg.register(arts["a"])
    reg.register(arts["b"])
    reg.promote("news", 1)
    register_router(reg, _router())

    elsewhere = tmp_path / "backup" / "elsewhere"
    shutil.copytree(original, elsewhere, symlinks=True)  # what `cp -a registry elsewhere` makes
    shutil.rmtree(original)

    copy = Registry(elsewhere, cache_dir=tmp_path / "cache2")
    rec = copy.lookup("news", verify=True)  # a read: no write, mapped to the copy's own files
    assert rec["version"] == 1 and Path(rec["path"]).is_relative_to(elsewhere)
    assert copy.load("news", version=2, base=base_fp)["manifest"]["task"] == "news"
    assert load_router(copy).tasks_ == ["news@1"]
    res = _cli("lookup", "news", "--json", registry=elsewhere)
    assert res.exit_code == 0, res.output
    pred = Predictor(copy, base=str(tiny_base), router=False, tasks=["news"])
    assert pred.predict(["the market rallied"], task="news")[0]["label"] in ("business", "sport", "tech")

    new = copy.register(arts["c"])  # a write re-roots the copy: new files land inside it
    assert new["version"] == 3 and Path(new["path"]).is_relative_to(elsewhere)
    assert not original.exists()  # nothing written back to where the registry came from
    rows = copy.client.search_runs([copy.experiment_id()], max_results=10)
    assert all(r.info.artifact_uri.startswith(elsewhere.as_uri()) for r in rows)
    assert Registry(elsewhere, fast=False).lookup("news", version=2)["version"] == 2  # through MLflow too


# -- 3. one write path: the router goes through the store ------------------------------------


def test_router_versions_use_the_ready_protocol_and_their_own_experiment(reg):
    from adaptreg.compose.router import ROUTER_EXPERIMENT, ROUTER_MODEL, register_router

    rec = register_router(reg, _router())
    mv = reg.client.get_model_version(ROUTER_MODEL, str(rec["version"]))
    assert mv.tags["adaptreg.status"] == "ready" and len(mv.tags["adaptreg.router_json_sha256"]) == 64
    run = reg.client.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == reg.client.get_experiment_by_name(ROUTER_EXPERIMENT).experiment_id
    assert run.info.experiment_id != reg.experiment_id()  # router runs are not mixed with adapter runs


# -- 4. alias moves and archiving exclude each other ------------------------------------------


class _PromoteThatStalls(Registry):
    """Promote pauses after it has checked the version; ``meanwhile`` runs then."""

    meanwhile = None

    def _resolve(self, *args, **kwargs):
        raw = super()._resolve(*args, **kwargs)
        if self.meanwhile is not None:
            fn, self.meanwhile = self.meanwhile, None
            fn()
        return raw


def _no_alias_on_archived(reg: Registry) -> None:
    recs = {r["version"]: r for r in reg.versions("news", all=True)}
    for alias, v in (reg._read("aliases", "news") or {}).items():
        assert not recs[v]["archived"], f"alias {alias!r} is on archived version {v}"


def test_archive_waits_for_a_promote_in_progress(reg2):
    """Locally both hold the registry lock: an archive that starts while a promote is between its
    check and its write waits, then drops the alias the promote set."""
    location = reg2.location.display
    promoter = _PromoteThatStalls(location, cache_dir=reg2.cache_dir)
    done = {}

    def archive() -> None:
        done["archive"] = Registry(location, cache_dir=reg2.cache_dir).archive("news", 2)

    thread = threading.Thread(target=archive)
    promoter.meanwhile = lambda: (thread.start(), time.sleep(1.5))
    promoter.promote("news", 2)
    thread.join(timeout=60)
    assert done["archive"]["dropped_aliases"] == ["production"]
    _no_alias_on_archived(reg2)


def test_promote_takes_its_alias_back_when_archived_meanwhile_without_a_lock(reg2):
    """Against a tracking server there is no shared lock: promote re-checks after its write."""
    location = reg2.location.display
    promoter = _PromoteThatStalls(location, cache_dir=reg2.cache_dir)
    other = Registry(location, cache_dir=reg2.cache_dir)
    promoter._held.depth = other._held.depth = 1  # as if each held the lock: no mutual exclusion
    promoter.meanwhile = lambda: other.archive("news", 2)
    with pytest.raises(RegistryError, match="archived while it was being promoted"):
        promoter.promote("news", 2)
    _no_alias_on_archived(reg2)


# -- 6. nothing ready that is broken ------------------------------------------------------------


def test_non_finite_weights_are_never_registered(reg, tmp_path, tiny_base, base_fp):
    import torch
    from safetensors.torch import load_file, save_file

    art = build_artifact(tmp_path / "nan", tiny_base, base_fp)
    weights = load_file(str(art / "adapter_model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, str(art / "adapter_model.safetensors"))
    manifest = json.loads((art / artifact.MANIFEST).read_text())
    manifest.pop("files", None)
    artifact.write_files_checksums(art, manifest)  # checksums are right: only the values are bad
    with pytest.raises(IntegrityError, match="non-finite weights"):
        reg.register(art)
    assert reg.list_tasks() == []
    assert reg.client.search_runs([reg.experiment_id()]) == []  # not even a run was started


# -- 8. the router is checked against the registry ----------------------------------------------


def test_router_rewritten_with_matching_inner_checksum_is_refused(reg):
    from adaptreg.compose.router import ROUTER_JSON, load_router, register_router, router_versions

    register_router(reg, _router(0))
    stored = reg.local_path(router_versions(reg)[0]["source"])
    for p in stored.iterdir():
        p.chmod(0o644)
    _router(1).save(stored)  # weights and router.json rewritten together: consistent with each other
    assert (stored / ROUTER_JSON).is_file()
    with pytest.raises(IntegrityError, match="against the registry"):
        load_router(reg)


# -- 9. a registry that is missing, damaged or unreachable ------------------------------------------


def test_promote_on_a_mistyped_registry_creates_nothing(tmp_path):
    where = tmp_path / "regsitry"
    for args in (("promote", "news", "1"), ("archive", "news", "1", "--yes")):
        res = _cli(*args, registry=where)
        assert res.exit_code != 0 and "no registry at" in res.output, res.output
    assert not where.exists()


def test_corrupt_database_is_named(tmp_path):
    where = tmp_path / "reg"
    where.mkdir()
    (where / "mlflow.db").write_bytes(b"this is not a database" * 200)
    for args in (("promote", "news", "1"), ("lookup", "news"), ("list",)):
        res = _cli(*args, registry=where)
        assert res.exit_code != 0 and "mlflow.db" in res.output and "not a database" in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_unreachable_tracking_server_fails_fast_naming_it():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    res = _cli("promote", "news", "1", registry=f"http://127.0.0.1:{port}")
    assert res.exit_code != 0 and f"127.0.0.1:{port}" in res.output and "cannot reach" in res.output
    assert time.monotonic() - t0 < 10


# -- 5. a task name keeps its label set ------------------------------------------------------------


def test_new_version_with_another_label_set_is_refused_before_training(reg, arts, tmp_path, tiny_base):
    from adaptreg.train import onboard

    reg.register(arts["a"])  # news: business, sport, tech
    rows = "text,label\n" + "".join(f"{w} film {i},{lab}\n" for i in range(12)
                                     for w, lab in (("good great", "pos"), ("bad awful", "neg")))
    (tmp_path / "senti.csv").write_text(rows)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        onboard("news", str(tmp_path / "senti.csv"), base=str(tiny_base), registry=reg, progress=False)
    msg = str(err.value)
    assert "['business', 'sport', 'tech']" in msg and "['neg', 'pos']" in msg and "--new-labels" in msg
    assert time.monotonic() - t0 < 20 and [v["version"] for v in reg.versions("news")] == [1]
