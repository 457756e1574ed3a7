"""The router and the registry: router versions, loading, adding a task version.

:mod:`adaptreg.compose.router` is the estimator alone (statistics, routing, save/load);
this module stores it in the registry through the one write path (versions of the registered
model ``adaptreg-router``, runs in the experiment ``adaptreg-router``, the sha256 of
``router.json`` as a version tag) and rebuilds a registered task version's routing features from
its manifest's data source.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import IntegrityError
from ..registry import as_registry as _registry
from .router import ROUTER_JSON, Router, entry_name

logger = logging.getLogger(__name__)

ROUTER_MODEL = "adaptreg-router"
ROUTER_EXPERIMENT = "adaptreg-router"  # router runs apart from the adapters' ``adaptreg`` experiment
ROUTER_PATH = "router"
_KIND_TAG = "adaptreg.kind"
_STATUS_TAG = "adaptreg.status"
_SHA_TAG = "adaptreg.router_json_sha256"


def register_router(registry: Any, router: Router, description: str = "", base: Any = None) -> dict[str, Any]:
    """Store ``router`` as the next version of the registered model ``adaptreg-router``.

    Through the registry's one write path (:meth:`adaptreg.registry.Registry.store_version`):
    the lock, retries and the ready protocol, with the sha256 of ``router.json`` (which holds the
    sha256 of ``router.safetensors``) kept as a version tag, so the files are checked against the
    registry, not only against each other. The router model is not tagged ``adaptreg.managed``,
    so it never shows up as a task. ``base`` (a LoadedBase, whose features the router reads) is
    recorded in the MLmodel file, so the version also loads as an MLflow pyfunc model.
    """
    import tempfile

    from .._util import sha256_file

    router._check_fitted()
    reg = _registry(registry)
    tasks = ",".join(router.tasks_)
    from ..mlflow_model import write_model_files

    with tempfile.TemporaryDirectory(prefix="adaptreg-router-") as tmp:
        router.save(tmp)
        sha = sha256_file(Path(tmp) / ROUTER_JSON)
        write_model_files(tmp, kind="router", task=None, base_id=getattr(base, "id", None),
                          base_fingerprint=getattr(base, "fingerprint", None))
        files = sorted(Path(tmp).iterdir())

        def check(run_id: str, source: str) -> None:
            local = reg.local_path(source)
            if local is not None and sha256_file(local / ROUTER_JSON) != sha:
                raise IntegrityError(f"{local / ROUTER_JSON} differs from the router just saved; register it again")

        version = reg.store_version(
            model=ROUTER_MODEL, model_tags={_KIND_TAG: "router"},
            model_description="adaptreg task router: a new version each time a task is added",
            files=files, artifact_path=ROUTER_PATH,
            run_tags={_KIND_TAG: "router"},
            params={"tasks": tasks[:6000], **{k: str(v) for k, v in router.get_params().items()}}, metrics=[],
            version_tags={_KIND_TAG: "router", "adaptreg.tasks": tasks[:4000], _SHA_TAG: sha},
            description=description or f"routes {len(router.tasks_)} task version(s)", check=check,
            experiment=ROUTER_EXPERIMENT)
    return {"model": ROUTER_MODEL, "version": version, "tasks": list(router.tasks_)}


def router_versions(registry: Any) -> list[dict[str, Any]]:
    """Ready router versions, newest first."""
    reg = _registry(registry)
    if reg.location.db_path is not None and not reg.location.db_path.is_file():
        return []

    def row(version: Any, run_id: str, source: str, tags: dict[str, str], created: Any) -> dict[str, Any]:
        return {"version": int(version), "run_id": run_id, "source": source,
                "tasks": [t for t in tags.get("adaptreg.tasks", "").split(",") if t],
                "sha256": tags.get(_SHA_TAG), "created_ms": created}

    fast = getattr(reg, "_fast_reader", None)
    if fast is not None:  # a local SQLite registry: read MLflow's tables directly (no `import mlflow`)
        from ..registry.fast import SchemaMismatch

        try:
            raws = fast.model_versions(ROUTER_MODEL)
        except SchemaMismatch:
            raws = None
        if raws is not None:
            return [row(r["version"], r["run_id"], r["source"], r["tags"], r["created_ms"])
                    for r in raws if r["tags"].get(_STATUS_TAG) == "ready"]
    client = reg.client
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name='{ROUTER_MODEL}'", max_results=200, page_token=token)
        for mv in page:
            if (mv.tags or {}).get(_STATUS_TAG) == "ready":
                out.append(row(mv.version, mv.run_id, mv.source, dict(mv.tags or {}), mv.creation_timestamp))
        token = getattr(page, "token", None)
        if not token:
            break
    return sorted(out, key=lambda r: -r["version"])


def load_router(registry: Any, version: int | None = None) -> Router | None:
    """The latest (or given) registered router, checked against the registry's sha256; None when none."""
    import tempfile

    from .._util import sha256_file
    from ..errors import NotFoundError

    reg = _registry(registry)
    versions = router_versions(reg)
    if version is not None:
        versions = [v for v in versions if v["version"] == int(version)]
        if not versions:
            raise NotFoundError(f"no router version {version} in {reg.location.display}")
    if not versions:
        return None
    rec = versions[0]

    def load(d: Path) -> Router:
        if rec["sha256"]:
            if not (d / ROUTER_JSON).is_file():
                raise IntegrityError(f"router version {rec['version']}: {d / ROUTER_JSON} is missing")
            if sha256_file(d / ROUTER_JSON) != rec["sha256"]:
                raise IntegrityError(f"router version {rec['version']}: {d / ROUTER_JSON} failed its sha256 check "
                                     "against the registry; the router was modified; rebuild it with "
                                     "`adaptreg route add TASK... --rebuild`")
        else:
            logger.warning("router version %d was registered without a checksum in the registry; rebuild it with "
                           "`adaptreg route add TASK... --rebuild` to get one", rec["version"])
        return Router.load(d)

    local = reg.local_path(rec["source"])
    if local is not None:
        router = load(local)
    else:
        with tempfile.TemporaryDirectory(prefix="adaptreg-router-") as tmp:
            router = load(Path(reg.client.download_artifacts(rec["run_id"], ROUTER_PATH, tmp)))
    router.registry_version_ = rec["version"]
    return router


def task_features(registry: Any, task: str, base: Any, router: Router, split: str = "train",
                  version: int | None = None, data: Any = None) -> tuple[Any, list[int]]:
    """``router``'s features of a registered task's ``split``, rebuilt from its manifest's data source + seed."""
    from ..data.tasks import load_task_from_manifest

    reg = _registry(registry)
    rec = reg.lookup(task, version=version)
    manifest = json.loads((Path(rec["path"]) / "manifest.json").read_text(encoding="utf-8"))
    td = load_task_from_manifest(manifest, data)
    part = getattr(td, split)
    return router.features(base, part.texts), list(part.y)


def add_task_to_registry_router(registry: Any, task: str, base: Any, *, version: int | None = None,
                                data: Any = None, new_router: Router | None = None, threshold: float | None = None,
                                featurizer: Any = None) -> tuple[Router, dict[str, Any]]:
    """Add one registered version of ``task`` (its training split, from the manifest's data
    source) to the latest router as entry ``task@version``, and register the result as a new
    router version. Other versions' entries stay, so promoting an older version back routes with
    its own statistics again without a rebuild.

    ``version``: default, the version lookups serve (alias ``production``, else the latest ready).
    ``new_router``: start from this (unfitted) router instead of the latest (``--rebuild``).
    ``threshold``: set the stored abstention threshold.
    Reading the latest router, adding the entry and registering the result happen under the
    registry's lock, so two writers cannot both extend the same version and lose an update. The
    features are computed before taking the lock (again inside only if the router's feature
    settings changed meanwhile).
    """
    reg = _registry(registry)
    if version is None:
        version = int(reg.lookup(task)["version"])
    entry = entry_name(task, version)

    def featurize(r: Router) -> tuple[Any, list[int]]:
        got = featurizer(r) if featurizer is not None else None
        return got if got is not None else task_features(reg, task, base, r, "train", version=version, data=data)

    first = new_router if new_router is not None else (load_router(reg) or Router())
    x, y = featurize(first)
    with reg.locked():
        current = new_router if new_router is not None else (load_router(reg) or Router())
        if current.feature_key() != first.feature_key():
            x, y = featurize(current)  # rebuilt meanwhile
        if threshold is not None:
            current.threshold = threshold
        current.add_task(entry, x, y, replace=True)
        return current, register_router(reg, current, base=base)
