"""The adapter registry, kept in MLflow: one tracking run and one model version per registration.

A location is a directory (an SQLite database ``mlflow.db`` plus ``artifacts/``), an SQL
database URI (``sqlite:///...``, ``postgresql://...``) or an MLflow tracking server
(``http(s)://...``). Each task is an MLflow *registered model* of the same name; each
registration logs a run in the experiment ``adaptreg`` (parameters, per-epoch and final metrics,
the confusion-matrix plot, the adapter directory under ``adapter/``) and creates a model version
whose source is that ``adapter/`` directory. See ``docs/registry.md`` for the format.

The ready protocol: a version is created with the tag ``adaptreg.status=pending`` and becomes
``ready`` only after its files are stored and verified. Every lookup ignores versions that are
not ready, so a registration killed at any point leaves nothing that a lookup returns.

Reads of local SQLite registries go through :mod:`adaptreg._registry_fast` (stdlib sqlite3 on
MLflow's tables, no ``import mlflow``); every write goes through ``MlflowClient``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import io
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from . import artifact
from ._registry_fast import SchemaMismatch, SqliteReader
from ._util import sha256_file, to_json
from ._version import __version__
from .errors import ConfigError, IntegrityError, NotFoundError, RegistryError


logger = logging.getLogger(__name__)

ENV_LOCATION = "ADAPTREG_REGISTRY"
ENV_ARTIFACTS = "ADAPTREG_ARTIFACTS"
ENV_CACHE = "ADAPTREG_CACHE"
ENV_CRASH = "ADAPTREG_TEST_CRASH_AT"  # test hook: SIGKILL this process at a named point of register()
CRASH_POINTS = ("after_run", "after_artifacts", "after_version", "after_ready")
DEFAULT_LOCATION = "registry"
EXPERIMENT = "adaptreg"
DEFAULT_ALIAS = "production"
DB_NAME = "mlflow.db"

TAG = "adaptreg."
MANAGED_TAG = "adaptreg.managed"  # registered-model tag: this model is an adaptreg task
STATUS_TAG = "adaptreg.status"
READY, PENDING, FAILED = "ready", "pending", "failed"
ARCHIVED_TAG = "adaptreg.archived"
ROUTE_TAG = "adaptreg.route"  # version tag: "wanted" = onboarding meant to add it to the router
METRIC_TAG = "adaptreg.metric."
ADAPTER_PATH = "adapter"  # artifact sub-directory of a run that holds the adapter
PLOT_FILE = "confusion_matrix.png"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# --best picks the highest value, except for metrics whose name says smaller is better.
LOWER_IS_BETTER = ("loss", "seconds", "bytes", "trainable")
COMPARE_COLUMNS = ["task", "version", "aliases", "kind", "rank", "epochs", "serves", "test_accuracy", "test_macro_f1",
                   "probe_test_accuracy", "gain_test_points", "train_seconds", "trainable_pct"]

_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_PARAM_KEY_BAD = re.compile(r"[^\w./ -]")
_SQL_SCHEMES = ("postgresql", "mysql", "mssql")


def validate_task_name(name: Any) -> str:
    """A task name is also a registered-model name and a directory name (one rule: the artifact's)."""
    return artifact.validate_task_name(name)


def validate_alias(alias: Any) -> str:
    if (not isinstance(alias, str) or not _ALIAS_RE.match(alias) or alias.lower() == "latest"
            or re.fullmatch(r"[vV]\d+", alias)):
        raise ConfigError(f"invalid alias {alias!r}: use 1-64 letters, digits, '-' or '_', starting with a letter; "
                          "'latest' and 'v<N>' are reserved by MLflow (e.g. --alias production)")
    return alias


def _version_number(version: Any) -> int:
    text = str(version).strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"invalid version {version!r}: give a positive integer such as 1 or 2")
    return int(text)


# -- location ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a registry lives. ``kind``: ``dir``, ``sqlite``, ``sql`` or ``http``."""

    kind: str
    uri: str  # tracking and registry URI
    display: str
    db_path: Path | None = None  # local SQLite file (dir and sqlite kinds)
    artifact_root: str | None = None  # artifact location of the experiment, when adaptreg chooses it
    movable: bool = False  # artifacts live beside the database (the default): re-rooted when the folder moves

    @property
    def lock_path(self) -> Path | None:
        return None if self.db_path is None else self.db_path.parent / f".{self.db_path.name}.lock"


def resolve_location(location: str | os.PathLike | None = None, artifact_location: str | None = None) -> Location:
    """Argument, else ``$ADAPTREG_REGISTRY``, else ``./registry``."""
    raw = str(location) if location is not None else (os.environ.get(ENV_LOCATION) or DEFAULT_LOCATION)
    raw = raw.strip()
    if not raw:
        raise ConfigError("empty registry location: give a directory or an MLflow URI such as http://127.0.0.1:5000")
    artifact_location = artifact_location or os.environ.get(ENV_ARTIFACTS) or None
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme in ("http", "https"):
        return Location("http", raw.rstrip("/"), raw.rstrip("/"), artifact_root=artifact_location)
    if scheme == "sqlite":
        path = raw[len("sqlite:///"):] if raw.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise ConfigError(f"registry {raw!r}: give a file database such as sqlite:////abs/path/mlflow.db")
        db = Path(urllib.parse.unquote(path)).expanduser()
        if not db.is_absolute():
            db = db.resolve()
        root = artifact_location or (db.parent / "artifacts").as_uri()
        return Location("sqlite", "sqlite:///" + str(db), raw, db_path=db, artifact_root=root,
                        movable=not artifact_location)
    if scheme.split("+")[0] in _SQL_SCHEMES:
        return Location("sql", raw, _redact(raw), artifact_root=artifact_location)
    if scheme or raw.startswith("file:"):
        raise ConfigError(f"unsupported registry location {raw!r}: give a directory (SQLite + artifacts), an SQL "
                          "database URI (sqlite:///..., postgresql://...) or a tracking server (http://host:port); "
                          "MLflow 3 no longer accepts plain file stores")
    root = Path(raw).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"registry location {root} is a file: give a directory (it will hold {DB_NAME} and artifacts/)")
    db = root / DB_NAME
    return Location("dir", "sqlite:///" + str(db), str(root), db_path=db,
                    artifact_root=artifact_location or (root / "artifacts").as_uri(), movable=not artifact_location)


def _redact(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


def default_cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adaptreg" / "registry"


# -- records ----------------------------------------------------------------------------------


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _iso(ms: int) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="seconds")


def _usable(raw: dict[str, Any]) -> bool:
    """Ready and not archived: what latest/best/default lookups may return."""
    return raw["tags"].get(STATUS_TAG) == READY and raw["tags"].get(ARCHIVED_TAG) != "true"


def _record(raw: dict[str, Any]) -> dict[str, Any]:
    """The version record (JSON-ready) built from a raw version (MLflow fields + tags)."""
    t = raw["tags"]
    metrics = {k[len(METRIC_TAG):]: _loads(v) for k, v in t.items() if k.startswith(METRIC_TAG)}
    return {
        "task": raw["task"],
        "version": raw["version"],
        "aliases": list(raw["aliases"]),
        "status": t.get(STATUS_TAG, PENDING),
        "archived": t.get(ARCHIVED_TAG) == "true",
        "created_at": _iso(raw["created_ms"]),
        "run_id": raw["run_id"],
        "source": raw["source"],
        "base": {"id": t.get(TAG + "base_id"), "fingerprint": t.get(TAG + "base_fingerprint")},
        "data_fingerprint": t.get(TAG + "data_fingerprint"),
        "adapter": {"kind": t.get(TAG + "adapter_kind"), "rank": _int_or_none(t.get(TAG + "rank")),
                    "targets": [x for x in (t.get(TAG + "targets") or "").split(",") if x]},
        "epochs": _int_or_none(t.get(TAG + "epochs")),
        "serves": t.get(TAG + "serves") or "adapter",
        "n_labels": _int_or_none(t.get(TAG + "n_labels")),
        "parents": _loads(t.get(TAG + "parents")) or [],
        "adapter_sha256": t.get(TAG + "adapter_sha256"),
        "manifest_sha256": t.get(TAG + "manifest_sha256"),
        "adaptreg_version": t.get(TAG + "version"),
        "metrics": dict(sorted(metrics.items())),
    }


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _version_tags(manifest: dict[str, Any], manifest_sha: str) -> dict[str, str]:
    a, b = manifest.get("adapter") or {}, manifest.get("base") or {}
    d, tr = manifest.get("data") or {}, manifest.get("training") or {}
    tags = {
        STATUS_TAG: PENDING,
        TAG + "base_id": str(b.get("id", "")),
        TAG + "base_fingerprint": str(b.get("fingerprint", "")),
        TAG + "data_fingerprint": str(d.get("fingerprint", "")),
        TAG + "adapter_kind": str(a.get("kind", "")),
        TAG + "rank": str(a.get("rank", "")),
        TAG + "targets": ",".join(str(x) for x in a.get("targets") or []),
        TAG + "epochs": str(tr.get("epochs_run", tr.get("epochs", ""))),
        TAG + "n_labels": str(len(manifest.get("labels") or [])),
        TAG + "serves": str((manifest.get("selection") or {}).get("chosen", "adapter")),
        TAG + "parents": json.dumps(manifest.get("parents") or [], sort_keys=True, separators=(",", ":")),
        TAG + "adapter_sha256": manifest["files"]["adapter_model.safetensors"],
        TAG + "manifest_sha256": manifest_sha,
        TAG + "version": str(manifest.get("adaptreg_version", __version__)),
    }
    for k, v in (manifest.get("metrics") or {}).items():
        if _is_number(v):
            tags[METRIC_TAG + k] = json.dumps(v)
    return tags


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _params(task: str, manifest: dict[str, Any]) -> dict[str, str]:
    """Hyperparameters flattened to ``section.key`` strings (MLflow params are strings)."""
    out = {"task": task, "manifest_task": str(manifest.get("task", "")),
           "n_labels": str(len(manifest.get("labels") or [])),
           "labels": _param_value(",".join(str(x) for x in manifest.get("labels") or [])),
           "parents": _param_value(manifest.get("parents") or [])}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[_PARAM_KEY_BAD.sub("_", prefix)[:250]] = _param_value(obj)

    for section in ("base", "data", "adapter", "training"):
        walk(section, manifest.get(section) or {})
    return out


def _metrics(manifest: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step): per-epoch history under ``history/`` (step = epoch), final values at step 0."""
    out = []
    for row in manifest.get("history") or []:
        epoch = row.get("epoch")
        if not isinstance(epoch, int):
            continue
        for k, v in row.items():
            if k != "epoch" and _is_number(v):
                out.append((f"history/{_PARAM_KEY_BAD.sub('_', k)}", float(v), epoch))
    for k, v in (manifest.get("metrics") or {}).items():
        if _is_number(v):
            out.append((_PARAM_KEY_BAD.sub("_", k), float(v), 0))
    return out


def _refuse_pickles(directory: Path) -> None:
    bad = sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise IntegrityError(f"{directory} holds pickle-format weights ({', '.join(bad)}): only safetensors are "
                             "accepted, because loading a pickle can run code; remove them")


def _crash_point(where: str) -> None:
    if os.environ.get(ENV_CRASH) == where:
        logger.warning("%s=%s: killing this process (test hook)", ENV_CRASH, where)
        os.kill(os.getpid(), signal.SIGKILL)


def _local_path(source: str) -> Path | None:
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme == "" and source:
        return Path(source)
    return None


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer (MLflow's own client
    retries for minutes before it gives up)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answered: some servers have no /health; MLflow will tell the rest
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RegistryError(f"cannot reach the tracking server at {_redact(uri)} ({reason}); start it "
                            "(`mlflow server ...`) or give another --registry") from None


def _db_error(db: Path, exc: BaseException) -> RegistryError:
    return RegistryError(f"{db} is not a readable MLflow database ({str(exc).splitlines()[0][:120]}): restore it "
                         "from a backup or give another --registry")


def _check_sqlite(db: Path) -> None:
    """A clear error for a damaged or foreign database file before MLflow tries to migrate it."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True, timeout=30)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise _db_error(db, exc) from None


_PATH_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
                 ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


def _stored_artifact_root(db: Path) -> str | None:
    """The artifact root a local registry was created with, from its experiments' locations.

    The ``adaptreg`` experiment stores at the root itself; adaptreg's other experiments
    (``adaptreg-router``, ``adaptreg-continual``) at ``<root>/<name>``.
    """
    import sqlite3

    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("SELECT name, artifact_location FROM experiments").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None
    for name, loc in rows:
        if name == EXPERIMENT and loc:
            return str(loc).rstrip("/")
    for name, loc in rows:
        if name.startswith("adaptreg-") and loc and str(loc).rstrip("/").endswith("/" + name):
            return str(loc).rstrip("/")[: -len(name) - 1]
    return None


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


def _is_lower_better(metric: str) -> bool:
    return any(w in metric for w in LOWER_IS_BETTER)


# -- MLflow access ----------------------------------------------------------------------------


def _import_mlflow() -> Any:
    import mlflow  # noqa: F401 - about two seconds: only writes and remote reads need it
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def _is_not_found(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def _is_exists(exc: BaseException) -> bool:
    return _error_code(exc) == "RESOURCE_ALREADY_EXISTS" or "already exists" in str(exc).lower()


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: a lock collision, or MLflow's version numbering losing three races in a row."""
    if _is_exists(exc) or _is_not_found(exc):
        return False
    msg = str(exc)
    return _error_code(exc) == "TEMPORARILY_UNAVAILABLE" or "database is locked" in msg or "Giving up after" in msg


class _ClientReader:
    """The reader interface of :class:`adaptreg._registry_fast.SqliteReader`, through MlflowClient."""

    def __init__(self, client: Any):
        self.client = client

    def _model(self, task: str) -> Any:
        try:
            rm = self.client.get_registered_model(task)
        except Exception as exc:
            if _is_not_found(exc):
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
            if _is_not_found(exc):
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
            if _usable(raw):
                return raw
        return None


# -- the registry -----------------------------------------------------------------------------


class Registry:
    """Adapter versions on MLflow's tracking server and model registry.

    ``location``: a directory, an SQL database URI or an ``http(s)://`` tracking server
    (default ``$ADAPTREG_REGISTRY``, else ``./registry``). ``artifact_location`` overrides where
    a new experiment stores artifacts (default ``<dir>/artifacts``; needed for ``postgresql://``).
    ``cache_dir`` holds adapters downloaded from remote stores (default ``$ADAPTREG_CACHE`` or
    ``~/.cache/adaptreg/registry``). ``fast=False`` turns off the sqlite3 read path.
    """

    def __init__(self, location: str | os.PathLike | None = None, *, artifact_location: str | None = None,
                 cache_dir: str | os.PathLike | None = None, fast: bool | None = None):
        self.location = resolve_location(location, artifact_location)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.fast = fast
        self._client: Any = None
        self._experiment_ids: dict[str, str] = {}
        self._stored_root: str | None | bool = False  # not read yet
        self._held = threading.local()  # depth of this thread's hold on the write lock
        self._fast_reader = None
        if self.location.db_path is not None and fast is not False:
            self._fast_reader = SqliteReader(self.location.db_path, MANAGED_TAG, STATUS_TAG, ARCHIVED_TAG, READY)

    def __repr__(self) -> str:
        return f"Registry({self.location.display!r})"

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """An ``MlflowClient`` with both URIs set explicitly (never MLflow's defaults)."""
        if self._client is None:
            if self.location.kind == "http":
                _check_reachable(self.location.uri)
            client_cls = _import_mlflow()
            db = self.location.db_path
            with self._lock():  # the first use of a fresh SQLite file creates its tables: one process at a time
                if db is not None:
                    db.parent.mkdir(parents=True, exist_ok=True)
                    _check_sqlite(db)
                client = client_cls(tracking_uri=self.location.uri, registry_uri=self.location.uri)
                if db is not None:
                    try:
                        client.get_experiment_by_name(EXPERIMENT)  # initialise the tracking tables
                        client.search_registered_models(max_results=1)  # and the registry tables
                    except Exception as exc:
                        if "not a database" in str(exc) or "malformed" in str(exc):
                            raise _db_error(db, exc) from None
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
            self._stored_root = _stored_artifact_root(self.location.db_path)
        old = self._stored_root
        return old if isinstance(old, str) and old != self.location.artifact_root.rstrip("/") else None

    def local_path(self, source: str) -> Path | None:
        """The local directory of a stored ``source`` URI (None for remote stores).

        A registry folder copied with ``cp -a`` or moved still records its old absolute
        artifact paths until its next write re-roots them (:meth:`_reroot`); reads map them to
        the folder's own ``artifacts/`` meanwhile, so read-only copies work too.
        """
        p = _local_path(source)
        old = self._old_root() if p is not None else None
        if old is None or not old.startswith("file:"):
            return p
        old_dir = _local_path(old)
        try:
            rel = p.relative_to(old_dir)  # type: ignore[union-attr, arg-type]
        except ValueError:
            return p
        return _local_path(self.location.artifact_root) / rel  # type: ignore[operator, union-attr]

    def _reroot(self) -> None:
        """Rewrite the artifact locations of a copied or moved registry folder to where it is now
        (under the lock, before any write), so new runs store inside this folder, not the original."""
        import sqlite3

        old = self._old_root()
        db = self.location.db_path
        if old is None or db is None or not old.startswith("file:"):
            return
        new = self.location.artifact_root.rstrip("/")  # type: ignore[union-attr]
        here = _local_path(new)
        if here is None or not here.is_dir():
            logger.warning("registry %s records artifacts under %s and has no artifacts/ folder of its own: "
                           "leaving its locations as they are", self.location.display, old)
            return
        con = sqlite3.connect(str(db), timeout=60)
        try:
            with con:
                for table, col in _PATH_COLUMNS:
                    cols = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                    if col in cols:
                        con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) "
                                    f"WHERE {col} = ? OR substr({col}, 1, ?) = ?",
                                    (new, len(old) + 1, old, len(old) + 1, old + "/"))
        finally:
            con.close()
        logger.info("registry %s was copied or moved from %s: artifact locations re-rooted", self.location.display,
                    _local_path(old))
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

    def _read(self, method: str, *args: Any) -> Any:
        if self._fast_reader is not None:
            import sqlite3

            try:
                return getattr(self._fast_reader, method)(*args)
            except SchemaMismatch as exc:
                logger.warning("registry database schema not recognised (%s): reading through MLflow instead", exc)
                self._fast_reader = None
            except sqlite3.DatabaseError as exc:
                raise _db_error(self.location.db_path, exc) from None  # type: ignore[arg-type]
        if self.location.kind == "dir" and not self.location.db_path.is_file():  # type: ignore[union-attr]
            return {"task_names": [], "aliases": None, "version": None, "versions": [], "latest_ready": None}[method]
        return getattr(_ClientReader(self.client), method)(*args)

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
            if not _is_not_found(exc):
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

    # -- writing ------------------------------------------------------------------------------

    def register(self, artifact_dir: str | os.PathLike, *, task: str | None = None,
                 extra_artifacts: list[str | os.PathLike] | None = None,
                 tags: dict[str, str] | None = None) -> dict[str, Any]:
        """Store a verified adapter artifact as the next version of its task; return its record.

        ``task`` defaults to the manifest's task. ``extra_artifacts`` (files or directories) are
        logged on the run under ``extra/``. ``tags``: more version tags (keys ``adaptreg.*``). The version turns ready (visible to lookups) only
        after its stored files passed their sha256 checks.
        """
        d = Path(artifact_dir)
        if not d.is_dir():
            raise ConfigError(f"{d} is not a directory: give an adapter artifact directory (from `adaptreg onboard`)")
        _refuse_pickles(d)
        manifest = artifact.verify(d)
        task = validate_task_name(task if task is not None else manifest.get("task", ""))
        extras = [Path(p) for p in extra_artifacts or []]
        for p in extras:
            if not p.exists():
                raise ConfigError(f"extra artifact {p} does not exist")
        manifest_sha = sha256_file(d / artifact.MANIFEST)
        from .mlflow_model import MODEL_FILES, write_model_files

        files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name != PLOT_FILE and p.name not in MODEL_FILES)
        skipped = sorted(p.name for p in d.iterdir() if p.is_dir())
        if skipped:
            logger.warning("not registering sub-directories of %s: %s", d, ", ".join(skipped))

        bad = nonfinite_tensors(d)
        if bad:
            raise IntegrityError(f"{d} holds non-finite weights ({', '.join(bad[:3])}"
                                 f"{', ...' if len(bad) > 3 else ''}): training diverged; nothing was registered. "
                                 "Train again with a lower --lr")
        a = manifest.get("adapter") or {}
        run_tags = {
            TAG + "task": task,
            TAG + "base_id": str((manifest.get("base") or {}).get("id", "")),
            TAG + "base_fingerprint": str((manifest.get("base") or {}).get("fingerprint", "")),
            TAG + "data_fingerprint": str((manifest.get("data") or {}).get("fingerprint", "")),
            TAG + "adapter_kind": str(a.get("kind", "")),
            TAG + "manifest_sha256": manifest_sha,
            TAG + "version": __version__,
            TAG + "pid": str(os.getpid()),
            "mlflow.source.name": "adaptreg",
        }

        def log_extras(client: Any, run_id: str) -> None:
            if (d / PLOT_FILE).is_file():
                client.log_artifact(run_id, str(d / PLOT_FILE), "plots")
            for p in extras:
                if p.is_dir():
                    client.log_artifacts(run_id, str(p), f"extra/{p.name}")
                else:
                    client.log_artifact(run_id, str(p), "extra")

        def check(run_id: str, source: str) -> None:
            self._check_stored(run_id, source, files, manifest_sha)

        b = manifest.get("base") or {}
        model_dir = Path(tempfile.mkdtemp(prefix="adaptreg-mlmodel-"))
        try:
            files += write_model_files(model_dir, kind="adapter", task=task, base_id=b.get("id"),
                                       base_fingerprint=b.get("fingerprint"), labels=manifest.get("labels"))
            version = self._store_adapter(task, manifest, manifest_sha, files, run_tags, tags, check, log_extras, a)
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)
        raw = _ClientReader(self.client).version(task, version)
        rec = _record(raw)
        rec["path"] = str(self._materialize(rec, local_copy_from=d))
        logger.info("registered %s version %d (%s)", task, version, rec["path"])
        return rec

    def _store_adapter(self, task: str, manifest: dict[str, Any], manifest_sha: str, files: list[Path],
                       run_tags: dict[str, str], tags: dict[str, str] | None, check: Callable[[str, str], None],
                       log_extras: Callable[[Any, str], None], a: dict[str, Any]) -> int:
        return self.store_version(
            model=task, model_tags={MANAGED_TAG: "true"},
            model_description=f"adaptreg task {task!r}: one version per registered adapter",
            files=files, artifact_path=ADAPTER_PATH,
            run_tags=run_tags, params=_params(task, manifest), metrics=_metrics(manifest),
            version_tags={**_version_tags(manifest, manifest_sha), **(tags or {})}, check=check, log_extras=log_extras,
            description=f"{task}: {a.get('kind', '?')} rank {a.get('rank', '?')} on "
                        f"{(manifest.get('base') or {}).get('id', '?')}")

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
            _crash_point("after_run")
            for p in files:
                client.log_artifact(run_id, str(p), artifact_path)
            if log_extras is not None:
                log_extras(client, run_id)
            _crash_point("after_artifacts")
            source = run.info.artifact_uri.rstrip("/") + "/" + artifact_path
            if check is not None:
                check(run_id, source)
            self._ensure_model(model, model_tags, model_description)
            mv = self.write(client.create_model_version, model, source=source, run_id=run_id,
                            tags={**version_tags, STATUS_TAG: PENDING}, await_creation_for=0, description=description)
            version = int(mv.version)
            _crash_point("after_version")
            self.write(client.set_model_version_tag, model, str(version), STATUS_TAG, READY)
            ready = True
            _crash_point("after_ready")
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

    def _check_stored(self, run_id: str, source: str, files: list[Path], manifest_sha: str) -> None:
        """Compare what the store now holds with what was meant to be stored."""
        local = self.local_path(source)
        if local is not None and local.is_dir():
            artifact.verify(local)
            got = sha256_file(local / artifact.MANIFEST)
            if got != manifest_sha:
                raise IntegrityError(f"{local / artifact.MANIFEST} differs from the registered manifest after copying; "
                                     "the store is being modified concurrently")
            return
        listed = {Path(f.path).name: f.file_size for f in self.client.list_artifacts(run_id, ADAPTER_PATH)}
        for p in files:
            if listed.get(p.name) != p.stat().st_size:
                raise IntegrityError(f"upload of {p.name} to {source} is incomplete "
                                     f"({listed.get(p.name)} of {p.stat().st_size} bytes); register again")

    def promote(self, task: str, version: int | str, alias: str = DEFAULT_ALIAS) -> dict[str, Any]:
        """Point ``alias`` (an MLflow alias, e.g. ``production``) at a ready, unarchived version.

        Alias moves and archiving exclude each other: locally both run under the registry's lock;
        against a server (no shared lock) each re-checks after its own write: promote re-reads the
        version and takes the alias back if it was archived meanwhile, archive re-reads the
        aliases after tagging. Whichever order the writes land in, no alias stays on an archived
        version.
        """
        alias = validate_alias(alias)
        self._require_existing()
        with self._lock():
            reader = _ClientReader(self.client)
            raw = self._resolve(task, version=version, reader=reader)
            v = raw["version"]
            if raw["tags"].get(ARCHIVED_TAG) == "true":
                raise RegistryError(f"version {v} of task {task!r} is archived: promote another version "
                                    f"(`adaptreg show {task}` lists them)")
            self.write(self.client.set_registered_model_alias, task, alias, str(v))
            now = reader.version(task, v)
            if now is None or now["tags"].get(ARCHIVED_TAG) == "true":
                self._drop_alias(reader, task, alias, v)
                raise RegistryError(f"version {v} of task {task!r} was archived while it was being promoted; "
                                    f"alias {alias!r} was not moved")
            return self._with_path(now)

    def _drop_alias(self, reader: "_ClientReader", task: str, alias: str, version: int) -> None:
        if (reader.aliases(task) or {}).get(alias) == version:
            try:
                self.write(self.client.delete_registered_model_alias, task, alias)
            except Exception as exc:
                if not _is_not_found(exc):
                    raise

    def archive(self, task: str, version: int | str) -> dict[str, Any]:
        """Hide a version from latest/best/default lookups and drop its aliases; its files stay."""
        self._require_existing()
        with self._lock():
            reader = _ClientReader(self.client)
            raw = self._resolve(task, version=version, reader=reader, require_ready=False)
            v = raw["version"]
            self.write(self.client.set_model_version_tag, task, str(v), ARCHIVED_TAG, "true")
            dropped = sorted(a for a, target in (reader.aliases(task) or {}).items() if target == v)
            for alias in dropped:
                self._drop_alias(reader, task, alias, v)
            rec = _record(reader.version(task, v))
            rec["dropped_aliases"] = dropped
            return rec

    # -- reading ------------------------------------------------------------------------------

    def _no_task(self, task: str) -> NotFoundError:
        names = self._read("task_names")
        listed = ", ".join(names) if names else "none yet: register one with `adaptreg onboard`"
        return NotFoundError(f"no task {task!r} in the registry at {self.location.display} (tasks: {listed})")

    def _resolve(self, task: str, version: Any = None, alias: str | None = None, best: str | None = None, *,
                 reader: Any = None, require_ready: bool = True) -> dict[str, Any]:
        """Find the raw version a selector names; default: alias production, else the latest ready."""
        task = validate_task_name(task)
        if sum(x is not None for x in (version, alias, best)) > 1:
            raise ConfigError("give at most one of --version, --alias or --best")
        read = (lambda m, *a: getattr(reader, m)(*a)) if reader is not None else self._read
        aliases = read("aliases", task)
        if aliases is None:
            raise self._no_task(task)
        if version is not None:
            v = _version_number(version)
            raw = read("version", task, v)
            if raw is None:
                ready = [str(r["version"]) for r in read("versions", task) if r["tags"].get(STATUS_TAG) == READY]
                raise NotFoundError(f"task {task!r} has no version {v} (versions: {', '.join(reversed(ready)) or 'none'})")
            if require_ready and raw["tags"].get(STATUS_TAG) != READY:
                raise NotFoundError(f"version {v} of task {task!r} is not usable: its registration did not complete "
                                    f"(status {raw['tags'].get(STATUS_TAG, PENDING)}); register it again")
            return raw
        if alias is not None:
            if alias not in aliases:
                raise NotFoundError(f"no alias {alias!r} for task {task!r} "
                                    f"(aliases: {', '.join(aliases) or 'none; set one with `adaptreg promote`'})")
            raw = read("version", task, aliases[alias])
            if raw is None or raw["tags"].get(STATUS_TAG) != READY:
                raise NotFoundError(f"alias {alias!r} of task {task!r} points at version {aliases[alias]}, "
                                    "which is not ready; promote another version")
            return raw
        if best is not None:
            candidates = [r for r in read("versions", task) if _usable(r)]
            scored = [(float(_loads(r["tags"][METRIC_TAG + best])), r["version"], r) for r in candidates
                      if _is_number(_loads(r["tags"].get(METRIC_TAG + best)))]
            if not scored:
                known = sorted({k[len(METRIC_TAG):] for r in candidates for k in r["tags"] if k.startswith(METRIC_TAG)})
                raise NotFoundError(f"no ready version of task {task!r} has metric {best!r} "
                                    f"(metrics: {', '.join(known) or 'none'})")
            sign = -1.0 if _is_lower_better(best) else 1.0
            return max(scored, key=lambda s: (sign * s[0], s[1]))[2]
        if DEFAULT_ALIAS in aliases:
            raw = read("version", task, aliases[DEFAULT_ALIAS])
            if raw is not None and _usable(raw):
                return raw
        raw = read("latest_ready", task)
        if raw is None:
            raise NotFoundError(f"task {task!r} has no ready version (`adaptreg show {task} --all` lists incomplete "
                                "and archived ones); register one")
        return raw

    def _with_path(self, raw: dict[str, Any], download: bool = True) -> dict[str, Any]:
        rec = _record(raw)
        rec["path"] = str(self._materialize(rec)) if download or self.local_path(rec["source"]) else None
        return rec

    def _materialize(self, rec: dict[str, Any], local_copy_from: Path | None = None) -> Path:
        """A local directory with the version's files: in the store when local, else a verified cached copy."""
        local = self.local_path(rec["source"])
        if local is not None:
            if not (local / artifact.MANIFEST).is_file():
                raise IntegrityError(f"the files of {rec['task']} version {rec['version']} are missing at {local}: "
                                     "the registry store was moved or edited")
            return local
        key = str(rec["manifest_sha256"] or "").removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise IntegrityError(f"{rec['task']} version {rec['version']} has no manifest checksum; it was not "
                                 "registered by adaptreg")
        final = self.cache_dir / key
        if (final / artifact.MANIFEST).is_file():
            return final
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{key[:12]}.", suffix=".partial"))
        try:
            if local_copy_from is not None:
                got = tmp / ADAPTER_PATH
                got.mkdir()
                for p in local_copy_from.iterdir():
                    if p.is_file() and not p.name.startswith(".") and p.name != PLOT_FILE:
                        shutil.copy2(p, got / p.name)
            else:
                logger.info("downloading %s version %d to %s", rec["task"], rec["version"], final)
                got = Path(self.client.download_artifacts(rec["run_id"], ADAPTER_PATH, str(tmp)))
            self._verify(rec, got)
            try:
                os.replace(got, final)
            except OSError:
                if not (final / artifact.MANIFEST).is_file():  # not another process winning the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _verify(self, rec: dict[str, Any], path: Path) -> dict[str, Any]:
        """sha256 of the manifest against the registry, then of every file against the manifest."""
        _refuse_pickles(path)
        mpath = path / artifact.MANIFEST
        if not mpath.is_file():
            raise IntegrityError(f"{mpath} is missing: the stored adapter is incomplete")
        got = "" if not rec.get("manifest_sha256") else sha256_file(mpath)
        if got != rec.get("manifest_sha256"):
            raise IntegrityError(f"{mpath} failed its sha256 check against the registry (expected "
                                 f"{str(rec.get('manifest_sha256'))[:12]}..., got {got[:12]}...): the file was "
                                 "modified or truncated; do not use it")
        manifest = artifact.verify(path)
        if manifest["files"].get("adapter_model.safetensors") != rec.get("adapter_sha256"):
            raise IntegrityError(f"{path}: adapter_model.safetensors checksum differs from the registry's record")
        return manifest

    def lookup(self, task: str, version: int | str | None = None, alias: str | None = None,
               best: str | None = None, *, verify: bool = False) -> dict[str, Any]:
        """Resolve a version and return its record with a local ``path`` to the adapter directory.

        No selector: alias ``production`` if set, else the latest ready, unarchived version.
        ``best``: the ready, unarchived version with the highest value of that metric (lowest for
        losses, seconds, bytes and trainable counts). ``verify=True`` also checks every sha256.
        """
        rec = self._with_path(self._resolve(task, version, alias, best))
        if verify:
            self._verify(rec, Path(rec["path"]))
        return rec

    def load(self, task: str, version: int | str | None = None, alias: str | None = None,
             best: str | None = None, *, base: Any = None) -> dict[str, Any]:
        """Resolve, verify every file's sha256 and (given ``base``) its fingerprint; record + ``manifest``.

        ``base`` is a :class:`adaptreg.base.LoadedBase` or a fingerprint string (``sha256:...``).
        """
        rec = self.lookup(task, version, alias, best)
        manifest = self._verify(rec, Path(rec["path"]))
        if base is not None:
            if isinstance(base, str):
                artifact.check_base(manifest, base, base_id=base[:19])
            else:
                artifact.check_base(manifest, base.fingerprint, base_id=str(getattr(base, "id", "?")))
        rec["manifest"] = manifest
        return rec

    def versions(self, task: str, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - mirrors --all
        """Records of a task's versions, newest first: ready and unarchived ones, or every one with ``all``."""
        task = validate_task_name(task)
        if self._read("aliases", task) is None:
            raise self._no_task(task)
        raws = self._read("versions", task)
        return [_record(r) for r in raws if all or _usable(r)]

    def list_tasks(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        """One row per task: latest usable version, aliases, number of versions, best test accuracy."""
        rows = []
        for name in self._read("task_names"):
            raws = self._read("versions", name)
            usable = [r for r in raws if _usable(r)]
            shown = raws if all else usable
            if not shown:
                continue
            acc = [v for r in usable if _is_number(v := _loads(r["tags"].get(METRIC_TAG + "test_accuracy")))]
            rows.append({
                "task": name,
                "latest": usable[0]["version"] if usable else None,
                "versions": len(shown),
                "aliases": self._read("aliases", name) or {},
                "best_test_accuracy": max(acc) if acc else None,
                "updated_at": _iso(max(r["created_ms"] for r in shown)),
            })
        return rows

    def show(self, task: str, version: int | str | None = None, alias: str | None = None,
             all: bool = False) -> dict[str, Any]:  # noqa: A002
        """One version (with its run's parameters) when a selector is given, else the task and its versions."""
        if version is None and alias is None:
            recs = self.versions(task, all=all)
            usable = [r for r in recs if r["status"] == READY and not r["archived"]]
            return {"task": task, "aliases": self._read("aliases", task), "latest": usable[0]["version"] if usable else None,
                    "versions": recs}
        rec = self._with_path(self._resolve(task, version, alias), download=False)
        try:
            run = self.client.get_run(rec["run_id"])
            rec["params"] = dict(sorted(run.data.params.items()))
            rec["run_status"] = run.info.status
        except Exception as exc:  # the run was deleted: the version still stands on its tags
            if not _is_not_found(exc):
                raise
            rec["params"], rec["run_status"] = {}, None
        return rec

    def diff(self, task: str, v1: int | str, v2: int | str) -> dict[str, Any]:
        """Parameters, metrics and version tags of two versions side by side; ``differs`` marks changes."""
        reader = _ClientReader(self.client)
        a = self._resolve(task, version=v1, reader=reader)
        b = self._resolve(task, version=v2, reader=reader)

        def run_data(raw: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
            try:
                run = self.client.get_run(raw["run_id"])
            except Exception as exc:
                if _is_not_found(exc):
                    return {}, {}
                raise
            return run.data.params, run.data.metrics

        (pa, ma), (pb, mb) = run_data(a), run_data(b)
        ta = {k: v for k, v in a["tags"].items() if k.startswith(TAG) and k != STATUS_TAG}
        tb = {k: v for k, v in b["tags"].items() if k.startswith(TAG) and k != STATUS_TAG}

        def side(x: dict[str, Any], y: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"name": k, "v1": x.get(k), "v2": y.get(k), "differs": x.get(k) != y.get(k)}
                    for k in sorted(set(x) | set(y))]

        return {"task": task, "v1": a["version"], "v2": b["version"], "params": side(pa, pb),
                "metrics": side(ma, mb), "tags": side(ta, tb)}

    def compare_rows(self, tasks: list[str] | None = None, metric: str = "test_accuracy",
                     all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        """One row per ready version of each task (archived ones only with ``all``), best ``metric`` first."""
        names = list(tasks) if tasks else self._read("task_names")
        rows = []
        for name in names:
            recs = [r for r in self.versions(name, all=True) if r["status"] == READY and (all or not r["archived"])]
            for r in recs:
                m = r["metrics"]
                row = {"task": r["task"], "version": r["version"], "aliases": ",".join(r["aliases"]),
                       "kind": r["adapter"]["kind"], "rank": r["adapter"]["rank"], "epochs": r["epochs"],
                       "serves": r.get("serves", "adapter")}
                for col in COMPARE_COLUMNS[7:] + ([metric] if metric not in COMPARE_COLUMNS else []):
                    row[col] = m.get(col)
                if all:
                    row["archived"] = r["archived"]
                rows.append(row)
        if rows and not any(_is_number(r.get(metric)) for r in rows):
            known = sorted({k for name in names for r in self.versions(name, all=True) for k in r["metrics"]})
            raise NotFoundError(f"no version has metric {metric!r} (metrics: {', '.join(known) or 'none'})")
        rows.sort(key=lambda r: (not _is_number(r.get(metric)), -(r.get(metric) or 0.0), r["task"], r["version"]))
        return rows

    def compare(self, tasks: list[str] | None = None, metric: str = "test_accuracy", fmt: str = "table",
                plot: str | os.PathLike | None = None, all: bool = False) -> str:  # noqa: A002
        """The rows of :meth:`compare_rows` rendered as ``table``, ``json`` or ``csv``; ``plot`` saves a bar chart."""
        if fmt not in ("table", "json", "csv"):
            raise ConfigError(f"unknown format {fmt!r}: use table, json or csv")
        rows = self.compare_rows(tasks, metric, all=all)
        if plot is not None:
            plot_compare(rows, metric, plot)
        if fmt == "json":
            return to_json(rows)
        columns = list(rows[0]) if rows else COMPARE_COLUMNS
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            return buf.getvalue().rstrip("\n")
        return render_table(rows, columns)


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width text table (floats to 4 decimals, None as '-')."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v)) or "-"
        if isinstance(v, dict):
            return ",".join(f"{k}={x}" for k, x in v.items()) or "-"
        return str(v) if v != "" else "-"

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def plot_compare(rows: list[dict[str, Any]], metric: str, path: str | os.PathLike) -> Path:
    """A horizontal bar chart of ``metric`` per version (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(f"{r['task']} v{r['version']}", float(r[metric])) for r in rows if _is_number(r.get(metric))]
    if not pts:
        raise ConfigError(f"nothing to plot: no version has a value for {metric!r}")
    pts.reverse()  # best at the top
    fig, ax = plt.subplots(figsize=(6.0, 1.0 + 0.3 * len(pts)), dpi=100)
    ax.barh([p[0] for p in pts], [p[1] for p in pts], color="#4c72b0")
    for i, (_, v) in enumerate(pts):
        ax.text(v, i, f" {v:.4g}", va="center", fontsize=7)
    ax.set_xlabel(metric)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def as_registry(registry: "Registry | str | os.PathLike | None") -> Registry:
    """A Registry as given, or one opened at a location (None = the default ``./registry``)."""
    return registry if isinstance(registry, Registry) else Registry(registry)
