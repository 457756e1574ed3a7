"""`adaptreg doctor`: finds each planted fault, repairs it, and then reports a clean registry."""

from __future__ import annotations

import json

from click.testing import CliRunner

from adaptreg.base import load_base
from adaptreg.cli import main
from adaptreg.compose.router import Router, add_task_to_registry_router, load_router
from adaptreg.data.tasks import load_task
from adaptreg.registry import ROUTE_TAG, Registry
from test_predict import MAX_LEN, make_adapter, write_csv
from test_registry import _crashing_register, arts, base_fp, build_artifact, empty_db, fresh_location  # noqa: F401


def _doctor(location, *extra: str):
    res = CliRunner().invoke(main, ["doctor", "--json", "--registry", str(location), *extra])
    return res.exit_code, json.loads(res.stdout) if res.stdout.strip().startswith("{") else res.output


def test_doctor_finds_and_repairs_each_planted_fault(tmp_path, empty_db, arts, tiny_base):
    from conftest import make_toy_rows

    location = fresh_location(tmp_path / "reg", empty_db)
    reg = Registry(location, cache_dir=tmp_path / "cache")
    code, report = _doctor(location)
    assert code == 0 and report["findings"] == [] and report["damage"] == 0  # an empty registry is clean

    # a routed task whose newest version never reached the router (a crash after "ready")
    lb = load_base(str(tiny_base))
    td = load_task(str(write_csv(tmp_path / "topic.csv", make_toy_rows(12))))
    reg.register(make_adapter(lb, "topic", td, tmp_path / "t1", seed=1), tags={ROUTE_TAG: "wanted"})
    add_task_to_registry_router(reg, "topic", lb, new_router=Router(max_length=MAX_LEN))
    reg.register(make_adapter(lb, "topic", td, tmp_path / "t2", seed=2), tags={ROUTE_TAG: "wanted"})
    # killed registrations: one after its version was created (pending), one after its run (RUNNING)
    assert _crashing_register(location, arts["a"], "after_version") == -9
    assert _crashing_register(location, arts["b"], "after_run") == -9
    # an alias left on an archived version (set behind adaptreg's back)
    reg.register(arts["c"])
    reg.archive("news", 2)
    reg.client.set_registered_model_alias("news", "production", "2")

    code, report = _doctor(location)
    assert code == 1, report
    kinds = sorted((f["kind"], f["target"]) for f in report["findings"])
    assert [k for k, _ in kinds] == ["alias_on_unusable", "not_routed", "pending_version", "running_run"], kinds
    assert ("not_routed", "topic v2") in kinds and ("pending_version", "news v1") in kinds
    assert report["damage"] == 4 and not any(f["repaired"] for f in report["findings"])

    code, report = _doctor(location, "--repair")
    assert code == 0 and report["repaired"] == 4 and report["damage"] == 0, report
    code, report = _doctor(location)
    assert code == 0 and report["findings"] == [], report

    fresh = Registry(location)
    assert sorted(load_router(fresh).tasks_) == ["topic@1", "topic@2"]
    assert [(v["version"], v["status"]) for v in fresh.versions("news", all=True)] == [(2, "ready"), (1, "failed")]
    assert "production" not in (fresh._read("aliases", "news") or {})
    runs = fresh.client.search_runs([fresh.experiment_id()], filter_string="attributes.status = 'RUNNING'")
    assert runs == []


def test_doctor_reports_damaged_files_and_exits_non_zero(tmp_path, empty_db, arts):
    location = fresh_location(tmp_path / "reg", empty_db)
    reg = Registry(location, cache_dir=tmp_path / "cache")
    rec = reg.register(arts["a"])
    weights = reg.local_path(rec["source"]) / "adapter_model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    code, report = _doctor(location, "--repair")
    assert code == 1 and [f["kind"] for f in report["findings"]] == ["damaged_files"]
    assert "archive" in report["findings"][0]["fix"]
