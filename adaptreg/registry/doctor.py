"""``adaptreg doctor``: find (and with ``repair=True`` fix) what interrupted writes leave behind.

Checks, in order:

* **stale registrations**: versions still ``pending`` and runs still ``RUNNING`` whose process
  is gone (same host, pid not alive) or that are older than ``grace_s``. Repair: the version is
  tagged ``failed`` and the run ends ``FAILED``, so nothing waits on them. A registration still
  in progress is reported as such and left alone.
* **aliases on archived versions** (an archive racing a promote on an old adaptreg, or an MLflow
  client used by hand). Repair: the alias is deleted.
* **versions missing from the router**: the version each task serves (alias ``production``,
  else the latest ready) was onboarded to be routed (version tag ``adaptreg.route=wanted``) but
  has no entry in the latest router, e.g. the process died between "ready" and the router
  update. Repair: its statistics are added (``adaptreg route add``; needs its data source).
* **damaged files**: every ready version's files against the registry's sha256 and the latest
  router's files against its registered checksum. Not repairable here: archive the version (or
  rebuild the router).

The result is a report dict; ``damage`` counts what remains broken after any repair.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from ..errors import AdaptregError
from .records import ARCHIVED_TAG, EXPERIMENT, FAILED, PENDING, READY, ROUTE_TAG, STATUS_TAG, TAG
from .api import (Registry,
                       as_registry)

logger = logging.getLogger(__name__)

DEFAULT_GRACE_S = 3600.0  # a registration writes for seconds to minutes; an hour-old pending one is dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale(tags: dict[str, str], started_ms: int | None, grace_s: float) -> bool:
    """A write left behind: its process is gone (same host), or it is older than ``grace_s``."""
    host, pid = tags.get(TAG + "host"), tags.get(TAG + "pid")
    if host == socket.gethostname() and pid and pid.isdigit() and not _alive(int(pid)):
        return True
    return started_ms is not None and time.time() - started_ms / 1000.0 > grace_s


def check(registry: Any = None, *, repair: bool = False, base: Any = None,
          grace_s: float = DEFAULT_GRACE_S) -> dict[str, Any]:
    """Inspect a registry; with ``repair`` fix what can be fixed. ``base``: a base spec or
    :class:`~adaptreg.base.LoadedBase` for router repairs (default: each task's recorded base)."""
    from ..compose.router import served_entries
    from ..compose.routing import ROUTER_EXPERIMENT, ROUTER_MODEL, load_router

    reg = as_registry(registry)
    reg._require_existing()
    client = reg.client
    findings: list[dict[str, Any]] = []

    def found(kind: str, target: str, detail: str, fix: str | None, action: Any = None) -> None:
        item = {"kind": kind, "target": target, "detail": detail, "fix": fix, "repaired": False}
        if repair and action is not None:
            try:
                action()
                item["repaired"] = True
            except AdaptregError as exc:
                item["repair_error"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one failed repair must not stop the others
                item["repair_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        findings.append(item)

    # -- stale registrations: pending versions, then RUNNING runs ------------------------------
    runs_seen: set[str] = set()

    def run_info(run_id: str) -> Any:
        try:
            return client.get_run(run_id)
        except Exception:  # noqa: BLE001 - a deleted run
            return None

    def fail_version(model: str, version: int, run_id: str) -> None:
        reg.write(client.set_model_version_tag, model, str(version), STATUS_TAG, FAILED)
        run = run_info(run_id)
        if run is not None and run.info.status == "RUNNING":
            reg.write(client.set_terminated, run_id, "FAILED")

    models = [(t, reg._read("versions", t)) for t in reg._read("task_names")]
    router_raws = []
    for mv in _search_versions(client, ROUTER_MODEL):
        router_raws.append({"task": ROUTER_MODEL, "version": int(mv.version), "run_id": mv.run_id or "",
                            "tags": dict(mv.tags or {}), "created_ms": int(mv.creation_timestamp or 0), "aliases": []})
    models.append((ROUTER_MODEL, router_raws))
    for model, raws in models:
        for raw in raws:
            if raw["tags"].get(STATUS_TAG, PENDING) != PENDING:
                continue
            run = run_info(raw["run_id"])
            runs_seen.add(raw["run_id"])
            tags = dict(run.data.tags) if run is not None else {}
            target = f"{model} v{raw['version']}"
            if _stale(tags, raw["created_ms"], grace_s):
                found("pending_version", target, "registration never completed (its process is gone)",
                      "mark it failed", lambda m=model, r=raw: fail_version(m, r["version"], r["run_id"]))
            else:
                findings.append({"kind": "in_progress", "target": target, "detail": "a registration is still running",
                                 "fix": None, "repaired": False})

    exp_ids = []
    for name in (EXPERIMENT, ROUTER_EXPERIMENT, "adaptreg-continual"):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            exp_ids.append(exp.experiment_id)
    if exp_ids:
        for run in client.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000):
            if run.info.run_id in runs_seen:
                continue
            target = f"run {run.info.run_id} ({run.info.run_name})"
            if _stale(dict(run.data.tags), run.info.start_time, grace_s):
                found("running_run", target, "run left RUNNING by a process that is gone", "end it FAILED",
                      lambda rid=run.info.run_id: reg.write(client.set_terminated, rid, "FAILED"))
            else:
                findings.append({"kind": "in_progress", "target": target, "detail": "a run is still being written",
                                 "fix": None, "repaired": False})

    # -- aliases on archived versions ----------------------------------------------------------
    for task, raws in models[:-1]:
        by_version = {r["version"]: r for r in raws}
        for alias, v in (reg._read("aliases", task) or {}).items():
            raw = by_version.get(v)
            if raw is not None and (raw["tags"].get(ARCHIVED_TAG) == "true" or raw["tags"].get(STATUS_TAG) != READY):
                why = "archived" if raw["tags"].get(ARCHIVED_TAG) == "true" else "not ready"
                found("alias_on_unusable", f"{task}@{alias}", f"alias {alias!r} points at {why} version {v}",
                      "delete the alias",
                      lambda t=task, a=alias: reg.write(client.delete_registered_model_alias, t, a))

    # -- files ---------------------------------------------------------------------------------
    for task, raws in models[:-1]:
        for raw in raws:
            if raw["tags"].get(STATUS_TAG) != READY:
                continue
            try:
                reg.lookup(task, version=raw["version"], verify=True)
            except AdaptregError as exc:
                found("damaged_files", f"{task} v{raw['version']}", str(exc),
                      f"archive it (`adaptreg archive {task} {raw['version']} --yes`) and register again")
    router = None
    try:
        router = load_router(reg)
    except AdaptregError as exc:
        found("damaged_router", ROUTER_MODEL, str(exc), "rebuild it (`adaptreg route add TASK... --rebuild`)")

    # -- served versions missing from the router -------------------------------------------------
    bases: dict[str, Any] = {}

    def add_to_router(task: str, version: int, base_id: str | None) -> None:
        from ..base import LoadedBase, load_base
        from ..compose.routing import add_task_to_registry_router

        spec = base if base is not None else base_id
        if spec is None:
            raise AdaptregError(f"{task} v{version} records no base: run doctor with --base")
        key = spec.id if isinstance(spec, LoadedBase) else str(spec)
        if key not in bases:
            bases[key] = spec if isinstance(spec, LoadedBase) else load_base(spec)
        add_task_to_registry_router(reg, task, bases[key], version=version)

    for task, raws in models[:-1]:
        try:
            served = reg.lookup(task)
        except AdaptregError:
            continue
        raw = next((r for r in raws if r["version"] == served["version"]), None)
        if raw is None or raw["tags"].get(ROUTE_TAG) != "wanted":
            continue
        if router is not None and served_entries(router, {task: served["version"]}):
            continue
        found("not_routed", f"{task} v{served['version']}",
              "onboarded to be routed but missing from the router" if router is not None else
              "onboarded to be routed but no router is registered",
              f"add it (`adaptreg route add {task}`)",
              lambda t=task, v=served["version"], b=served["base"]["id"]: add_to_router(t, v, b))

    damage = sum(1 for f in findings if f["kind"] != "in_progress" and not f["repaired"])
    return {"registry": reg.location.display, "findings": findings, "damage": damage,
            "repaired": sum(1 for f in findings if f["repaired"])}


def _search_versions(client: Any, name: str) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name='{name}'", max_results=200, page_token=token)
        out += list(page)
        token = getattr(page, "token", None)
        if not token:
            return out


__all__ = ["check", "DEFAULT_GRACE_S", "Registry"]
