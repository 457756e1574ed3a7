"""The one write path to MLflow: the local lock, retries of transient failures, the ready
protocol, experiments and registered models, and re-rooting a moved registry folder.

Every MLflow write of adaptreg (adapter versions, router versions, benchmark runs, alias moves,
archiving) goes through :meth:`Store.write`; every new model version through
:meth:`Store.store_version`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, IntegrityError, NotFoundError, RegistryError

from .location import (ENV_ARTIFACTS, ENV_LOCATION, PATH_COLUMNS, Location, check_reachable, check_sqlite, db_error,
                       stored_artifact_root, uri_to_path)
from .records import EXPERIMENT, FAILED, MANAGED_TAG, PENDING, PICKLE_SUFFIXES, READY, STATUS_TAG, TAG, is_usable

logger = logging.getLogger(__name__)

# Fault injection for tests: a callable run with the name of each step of store_version
# ("after_run", "after_artifacts", "after_version", "after_ready"); None in production.
fault_hook: Callable[[str], None] | None = None


def _fault(where: str) -> None:
    if fault_hook is not None:
        fault_hook(where)


def refuse_pickles(directory: Path) -> None:
    """IntegrityError when ``directory`` holds pickle-format weight files (only safetensors are accepted)."""
    bad = sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise IntegrityError(f"{directory} holds pickle-format weights ({', '.join(bad)}): only safetensors are "
                             "accepted, because loading a pickle can run code; remove them")


def nonfinite_tensors(directory: Path) -> list[str]:
    """Names (``file:tensor``) of the safetensors tensors in ``directory`` holding NaN or inf."""
    import numpy as np
    from safetensors import safe_open

    bad = []
    for f in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    t = st.get_tensor(name)
                    if t.is_floating_point() and not bool(t.isfinite().all()):
                        bad.append(f"{f.name}:{name}")
        except ImportError:  # pragma: no cover - torch is a dependency; numpy reads all but bf16
            with safe_open(str(f), framework="np") as st:
                for name in st.keys():
                    a = st.get_tensor(name)
                    if a.dtype.kind == "f" and not np.isfinite(a).all():
                        bad.append(f"{f.name}:{name}")
    return bad


# -- MLflow access ----------------------------------------------------------------------------


def _import_mlflow() -> Any:
    import mlflow  # noqa: F401 - about two seconds: only writes and remote reads need it
    from mlflow.tracking import MlflowClient

    return MlflowClient  # other libraries' log levels are the application's to set (the CLI does)


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow error says the model, version or alias does not exist."""
    return _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def _is_exists(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(exc).lower()


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: a lock collision, or MLflow's version numbering losing three races in a row."""
    if _is_exists(exc) or is_not_found(exc):
        return False
    msg = str(exc)
    return _error_code(exc) == "TEMPORARILY_UNAVAILABLE" or "database is locked" in msg or "Giving up after" in msg


class ClientReader:
    """The reader interface of :class:`adaptreg.registry.fast.SqliteReader`, through MlflowClient."""

    def __init__(self, client: Any):
        self.client = client

    def _model(self, task: str) -> Any:
        try:
            rm = self.client.get_registered_model(task)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        return rm if (rm.tags or {}).get(MANAGED_TAG) == "true" else None

    @staticmethod
    def _raw(mv: Any) -> dict[str, Any]:
        return {"task": mv.name, "version": int(mv.version), "created_ms": int(mv.creation_timestamp or 0),
                "source": mv.source or "", "run_id": mv.run_id or "", "tags": dict(mv.tags or {}),
                "aliases": sorted(mv.aliases or [])}

    def _search(self, filter_string: str, order_by: list[str] | None = None) -> Iterator[Any]:
        token = None
        while True:
            page = self.client.search_model_versions(filter_string=filter_string, max_results=1000,
                                                     order_by=order_by, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def task_names(self) -> list[str]:
        names, token = [], None
        while True:
            page = self.client.search_registered_models(filter_string=f"tags.`{MANAGED_TAG}` = 'true'",
                                                        max_results=1000, page_token=token)
            names += [m.name for m in page]
            token = page.token
            if not token:
                return sorted(names)

    def aliases(self, task: str) -> dict[str, int] | None:
        rm = self._model(task)
        if rm is None:
            return None
        return {a: int(v) for a, v in sorted((rm.aliases or {}).items())}

    def version(self, task: str, version: int) -> dict[str, Any] | None:
        if self._model(task) is None:
            return None
        try:
            return self._raw(self.client.get_model_version(task, str(int(version))))
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise

    @staticmethod
    def _alias_map(rm: Any) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for a, v in (rm.aliases or {}).items():
            out.setdefault(int(v), []).append(a)
        return out

    def versions(self, task: str) -> list[dict[str, Any]]:
        rm = self._model(task)
        if rm is None:
            return []
        by_version = self._alias_map(rm)  # search results carry no aliases
        raws = [{**self._raw(mv), "aliases": sorted(by_version.get(int(mv.version), []))}
                for mv in self._search(f"name = '{task}'")]
        return sorted(raws, key=lambda r: -r["version"])

    def latest_ready(self, task: str) -> dict[str, Any] | None:
        rm = self._model(task)
        if rm is None:
            return None
        by_version = self._alias_map(rm)
        for mv in self._search(f"name = '{task}' AND tags.`{STATUS_TAG}` = '{READY}'", ["version_number DESC"]):
            raw = {**self._raw(mv), "aliases": sorted(by_version.get(int(mv.version), []))}
            if is_usable(raw):
                return raw
        return None


class Store:
    """MLflow access for one registry location: the client, the lock, every write."""

    def __init__(self, location: Location):
        self.location = location
        self._client: Any = None
        self._experiment_ids: dict[str, str] = {}
        self._stored_root: str | None | bool = False  # not read yet
        self._held = threading.local()  # depth of this thread's hold on the write lock

    @property
    def client(self) -> Any:
        """An ``MlflowClient`` with both URIs set explicitly (never MLflow's defaults)."""
        if self._client is None:
            if self.location.kind == "http":
                check_reachable(self.location.uri)
            client_cls = _import_mlflow()
            db = self.location.db_path
            with self._lock():  # the first use of a fresh SQLite file creates its tables: one process at a time
                if db is not None:
                    db.parent.mkdir(parents=True, exist_ok=True)
                    check_sqlite(db)
                client = client_cls(tracking_uri=self.location.uri, registry_uri=self.location.uri)
                if db is not None:
                    try:
                        client.get_experiment_by_name(EXPERIMENT)  # initialise the tracking tables
                        client.search_registered_models(max_results=1)  # and the registry tables
                    except Exception as exc:
                        if "not a database" in str(exc) or "malformed" in str(exc):
                            raise db_error(db, exc) from None
                        raise
                    self._reroot()
            self._client = client
        return self._client

    def _require_existing(self) -> None:
        """Refuse to act on a local registry that does not exist (a mistyped path creates nothing)."""
        db = self.location.db_path
        if db is not None and not db.is_file():
            raise NotFoundError(f"no registry at {self.location.display} ({db.name} is missing): check --registry "
                                f"or ${ENV_LOCATION}; nothing was created")

    # -- a registry folder that can be copied or moved ----------------------------------------

    def _old_root(self) -> str | None:
        """The artifact root recorded in this local registry when it differs from where it is now."""
        if not self.location.movable or self.location.db_path is None:
            return None
        if self._stored_root is False:
            self._stored_root = stored_artifact_root(self.location.db_path)
        old = self._stored_root
        return old if isinstance(old, str) and old != self.location.artifact_root.rstrip("/") else None

    def local_path(self, source: str) -> Path | None:
        """The local directory of a stored ``source`` URI (None for remote stores).

        A registry folder copied with ``cp -a`` or moved still records its old absolute
        artifact paths until its next write re-roots them (:meth:`_reroot`); reads map them to
        the folder's own ``artifacts/`` meanwhile, so read-only copies work too.
        """
        p = uri_to_path(source)
        old = self._old_root() if p is not None else None
        if old is None or not old.startswith("file:"):
            return p
        old_dir = uri_to_path(old)
        try:
            rel = p.relative_to(old_dir)  # type: ignore[union-attr, arg-type]
        except ValueError:
            return p
        return uri_to_path(self.location.artifact_root) / rel  # type: ignore[operator, union-attr]

    def _reroot(self) -> None:
        """Rewrite the artifact locations of a copied or moved registry folder to where it is now
        (under the lock, before any write), so new runs store inside this folder, not the original."""
        import sqlite3

        old = self._old_root()
        db = self.location.db_path
        if old is None or db is None or not old.startswith("file:"):
            return
        new = self.location.artifact_root.rstrip("/")  # type: ignore[union-attr]
        here = uri_to_path(new)
        if here is None or not here.is_dir():
            logger.warning("registry %s records artifacts under %s and has no artifacts/ folder of its own: "
                           "leaving its locations as they are", self.location.display, old)
            return
        con = sqlite3.connect(str(db), timeout=60)
        try:
            with con:
                for table, col in PATH_COLUMNS:
                    cols = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                    if col in cols:
                        con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "
                                    f"WHERE {col} = ? OR substr({col}, 1, ?) = ?",
                                    (new, len(old) + 1, old, len(old) + 1, old + "/"))
        finally:
            con.close()
        logger.info("registry %s was copied or moved from %s: artifact locations re-rooted", self.location.display,
                    uri_to_path(old))
        self._stored_root = new

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive lock on a local SQLite registry (``filelock``: fcntl on POSIX, msvcrt on
        Windows); re-entrant within a thread; a no-op for SQL databases and tracking servers."""
        path = self.location.lock_path
        depth = getattr(self._held, "depth", 0)
        if path is None or depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth
            return
        import filelock

        path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(path)):
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the local registry's write lock around a read-modify-write (re-entrant; no-op remotely)."""
        return self._lock()

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one MLflow write (``fn(*args, **kwargs)``) under the local lock, retrying transient failures.

        SQLite answers "database is locked" when two writers collide (busy timeouts do not cover
        a read lock being upgraded), and MLflow's version numbering (max + 1) gives up after
        three unique-key collisions: both are safe to retry because the failed transaction was
        rolled back.
        """
        delay = 0.05
        for attempt in range(10):
            try:
                with self._lock():
                    return fn(*args, **kwargs)
            except Exception as exc:
                if not _is_transient(exc) or attempt == 9:
                    raise
                logger.debug("registry busy (%s); retrying", str(exc).splitlines()[0][:120])
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        """The id of an adaptreg experiment (``adaptreg`` for adapters; ``adaptreg-router``,
        ``adaptreg-continual`` for the router and benchmarks), created once, race-safe."""
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        client = self.client
        exp = client.get_experiment_by_name(name)
        if exp is None:
            root = self.location.artifact_root
            if self.location.kind == "sql" and not root:
                raise ConfigError(f"registry {self.location.display}: an SQL database needs an artifact location; "
                                  f"pass artifact_location=... or set {ENV_ARTIFACTS} (e.g. s3://bucket/adaptreg)")
            if root and name != EXPERIMENT:
                root = root.rstrip("/") + "/" + name
            try:
                self._experiment_ids[name] = self.write(client.create_experiment, name, artifact_location=root)
                return self._experiment_ids[name]
            except Exception as exc:
                if not _is_exists(exc):
                    raise
            exp = client.get_experiment_by_name(name)
        if exp.lifecycle_stage != "active":
            raise RegistryError(f"the MLflow experiment {name!r} is deleted; restore it with "
                                f"`mlflow experiments restore --experiment-id {exp.experiment_id}`")
        self._experiment_ids[name] = exp.experiment_id
        return exp.experiment_id

    def _ensure_model(self, name: str, tags: dict[str, str], description: str) -> None:
        """Create the registered model ``name`` (race-safe), or check that the existing one carries ``tags``."""
        client = self.client
        try:
            rm = client.get_registered_model(name)
        except Exception as exc:
            if not is_not_found(exc):
                raise
            try:
                self.write(client.create_registered_model, name, tags=tags, description=description)
            except Exception as exc2:  # another process created it first: fine if it is ours
                if not _is_exists(exc2):
                    raise
                rm = client.get_registered_model(name)
            else:
                return
        have = rm.tags or {}
        if any(have.get(k) != v for k, v in tags.items()):
            raise RegistryError(f"the registered model {name!r} exists but was not created by adaptreg for this "
                                "purpose; register under another name")

    def _ensure_task(self, task: str) -> None:
        self._ensure_model(task, {MANAGED_TAG: "true"}, f"adaptreg task {task!r}: one version per registered adapter")

    def store_version(self, *, model: str, model_tags: dict[str, str], model_description: str,
                      files: list[Path], artifact_path: str, run_tags: dict[str, str],
                      params: dict[str, str], metrics: list[tuple[str, float, int]], version_tags: dict[str, str],
                      description: str, check: Callable[[str, str], None] | None = None,
                      log_extras: Callable[[Any, str], None] | None = None, experiment: str = EXPERIMENT) -> int:
        """The one write path for a new model version (adapters and the router alike); its number.

        One run in ``experiment`` holds ``files`` under ``artifact_path`` with ``params`` and
        ``metrics``; ``check(run_id, source)`` verifies what the store now holds; the version is
        created ``pending`` and tagged ``ready`` only then; the run is named ``<model>-v<N>`` and
        ends ``FINISHED`` (``FAILED`` and the version ``failed`` on any error). Every MLflow write goes through :meth:`write`
        (the local lock, retries of transient failures).
        """
        from mlflow.entities import Metric, Param

        import socket

        client = self.client
        exp_id = self.experiment_id(experiment)
        run_tags = {**run_tags, TAG + "pid": str(os.getpid()), TAG + "host": socket.gethostname()}
        run = self.write(client.create_run, exp_id, tags=run_tags, run_name=f"{model}-pending")
        run_id = run.info.run_id
        version: int | None = None
        ready = False
        try:
            now = int(time.time() * 1000)
            plist = [Param(k, v) for k, v in sorted(params.items())]
            mlist = [Metric(k, v, now, step) for k, v, step in metrics]
            for i in range(0, max(len(plist), len(mlist)), 100):
                self.write(client.log_batch, run_id, metrics=mlist[i:i + 100], params=plist[i:i + 100])
            _fault("after_run")
            for p in files:
                client.log_artifact(run_id, str(p), artifact_path)
            if log_extras is not None:
                log_extras(client, run_id)
            _fault("after_artifacts")
            source = run.info.artifact_uri.rstrip("/") + "/" + artifact_path
            if check is not None:
                check(run_id, source)
            self._ensure_model(model, model_tags, model_description)
            mv = self.write(client.create_model_version, model, source=source, run_id=run_id,
                            tags={**version_tags, STATUS_TAG: PENDING}, await_creation_for=0, description=description)
            version = int(mv.version)
            _fault("after_version")
            self.write(client.set_model_version_tag, model, str(version), STATUS_TAG, READY)
            ready = True
            _fault("after_ready")
            self.write(client.set_tag, run_id, TAG + "model_version", str(version))
            self.write(client.update_run, run_id, name=f"{model}-v{version}")
            self.write(client.set_terminated, run_id, "FINISHED")
        except BaseException:
            with contextlib.suppress(Exception):
                if version is not None and not ready:
                    self.write(client.set_model_version_tag, model, str(version), STATUS_TAG, FAILED)
                self.write(client.set_terminated, run_id, "FAILED")
            raise
        return version
