"""Where a registry lives (a directory, an SQL database or a tracking server), and moving it."""

from __future__ import annotations

import logging
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, RegistryError

from .records import EXPERIMENT

logger = logging.getLogger(__name__)

ENV_LOCATION = "ADAPTREG_REGISTRY"
ENV_ARTIFACTS = "ADAPTREG_ARTIFACTS"
ENV_CACHE = "ADAPTREG_CACHE"
DEFAULT_LOCATION = "registry"
DB_NAME = "mlflow.db"
_SQL_SCHEMES = ("postgresql", "mysql", "mssql")


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


def uri_to_path(source: str) -> Path | None:
    """The local path of a ``file:`` URI or a plain path; None for a remote URI."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    if parts.scheme == "" and source:
        return Path(source)
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
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


def db_error(db: Path, exc: BaseException) -> RegistryError:
    """The error for a local MLflow database that cannot be read, naming the file."""
    return RegistryError(f"{db} is not a readable MLflow database ({str(exc).splitlines()[0][:120]}): restore it "
                         "from a backup or give another --registry")


def check_sqlite(db: Path) -> None:
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
        raise db_error(db, exc) from None


# (table, column) of an MLflow database that hold artifact locations: re-rooted when a registry folder moves
PATH_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
                 ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


def stored_artifact_root(db: Path) -> str | None:
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
