"""Read-only access to a local SQLite registry through MLflow's own tables (stdlib ``sqlite3``).

``import mlflow`` costs about two seconds, which would spend the whole budget of an
``adaptreg lookup`` before it starts. For registries that are a local SQLite file, lookups and
listings therefore read the four tables the MLflow model registry keeps
(``registered_models``, ``registered_model_tags``, ``model_versions``, ``model_version_tags``,
``registered_model_aliases``) directly, with the same filters MLflow's ``SqlAlchemyStore``
applies (active workspace, versions not internally deleted). Writes never come here: they go
through ``MlflowClient``. ``tests/test_registry.py`` checks that both readers return the same.

Both readers return *raw versions*: ``{"task", "version", "created_ms", "source", "run_id",
"tags", "aliases"}`` with ``version`` an int and ``aliases`` sorted.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import RegistryError

WORKSPACE = "default"  # mlflow.utils.workspace_utils.DEFAULT_WORKSPACE_NAME
DELETED_STAGE = "Deleted_Internal"  # mlflow.entities.model_registry.model_version_stages
_TABLES = ("registered_models", "registered_model_tags", "model_versions", "model_version_tags",
           "registered_model_aliases")


class SchemaMismatch(Exception):
    """The database does not look like the MLflow schema this reader knows: use MlflowClient."""


class SqliteReader:
    """Reads one MLflow SQLite database (one cached connection; one read transaction per method)."""

    def __init__(self, db_path: str | Path, managed_tag: str, status_tag: str, archived_tag: str, ready: str):
        self.db_path = Path(db_path)
        self._managed = managed_tag
        self._status = status_tag
        self._archived = archived_tag
        self._ready = ready
        self._ws: bool | None = None  # whether the tables carry a workspace column
        self._local = threading.local()  # one connection per thread: .con, .key

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection | None:
        """This thread's cached connection (re-opened when the file was replaced or after a fork).

        Opening costs little, but the first statement on a connection parses MLflow's whole
        schema (about a third of a millisecond per statement otherwise), hence the cache.
        """
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            self._close()
            return None
        key = (st.st_dev, st.st_ino, os.getpid())
        con = getattr(self._local, "con", None)
        if con is not None and self._local.key == key:
            return con
        self._close()
        uri = "file:" + urllib.parse.quote(str(self.db_path))
        try:
            # mode=rw (never creates the file) so that a hot journal left by a killed writer is
            # rolled back on open; query_only guarantees this connection writes nothing else.
            con = sqlite3.connect(uri + "?mode=rw", uri=True, timeout=20.0)
        except sqlite3.OperationalError:
            con = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=20.0)
        con.isolation_level = None  # transactions are begun and ended explicitly below
        con.execute("PRAGMA query_only = ON")
        self._local.con, self._local.key = con, key
        return con

    def _close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None and self._local.key[2] == os.getpid():  # never close a handle inherited through fork
            with contextlib.suppress(sqlite3.Error):
                con.close()
        self._local.con, self._local.key = None, None

    def close(self) -> None:
        self._close()

    @staticmethod
    def _check_schema(con: sqlite3.Connection) -> bool | None:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not names & set(_TABLES):
            return None  # empty database: no registry tables yet
        missing = [t for t in _TABLES if t not in names]
        if missing:
            raise SchemaMismatch(f"tables missing: {missing}")
        need = {
            "model_versions": {"name", "version", "creation_time", "source", "run_id", "current_stage"},
            "model_version_tags": {"key", "value", "name", "version"},
            "registered_model_aliases": {"alias", "version", "name"},
            "registered_model_tags": {"key", "value", "name"},
        }
        ws = []
        for table, cols in need.items():
            have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            if not cols <= have:
                raise SchemaMismatch(f"{table} lacks {sorted(cols - have)}")
            ws.append("workspace" in have)
        return all(ws)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Callable[..., list[tuple]]]:
        """One read transaction for a whole method, so that its queries see one state."""
        con = self._connect()
        if con is None:
            yield lambda sql, args=(): []
            return
        began = False
        try:
            if self._ws is None:  # (re)check: the tables may have been created since last time
                self._ws = self._check_schema(con)
            if self._ws is None:
                yield lambda sql, args=(): []
                return
            con.execute("BEGIN")
            began = True

            def query(sql: str, args: tuple = ()) -> list[tuple]:
                if self._ws:
                    sql = (sql.replace("{ws}", "workspace = ?").replace("{ws_mv}", "mv.workspace = ?")
                           .replace("{ws_join}", "t.workspace = mv.workspace AND "))
                    args = tuple(WORKSPACE if a is _WS else a for a in args)
                else:
                    sql = sql.replace("{ws}", "1 = 1").replace("{ws_mv}", "1 = 1").replace("{ws_join}", "")
                    args = tuple(a for a in args if a is not _WS)
                return con.execute(sql, args).fetchall()

            yield query
        except sqlite3.DatabaseError as exc:
            self._close()
            raise RegistryError(f"cannot read the registry database {self.db_path}: {exc}") from exc
        finally:
            if began and getattr(self._local, "con", None) is con:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("COMMIT")  # ends the read transaction: writers are not held up

    # -- the reader interface (same as store.ClientReader) --------------------------------------

    def task_names(self) -> list[str]:
        with self._session() as q:
            rows = q("SELECT name FROM registered_model_tags WHERE {ws} AND key = ? AND value = 'true' ORDER BY name",
                     (_WS, self._managed))
        return [r[0] for r in rows]

    def aliases(self, task: str) -> dict[str, int] | None:
        """``{alias: version}`` of a managed task, or None when there is no such task."""
        with self._session() as q:
            if not _managed(q, task, self._managed):
                return None
            rows = q("SELECT alias, version FROM registered_model_aliases WHERE {ws} AND name = ?", (_WS, task))
        return {a: int(v) for a, v in sorted(rows)}

    def version(self, task: str, version: int) -> dict[str, Any] | None:
        with self._session() as q:
            if not _managed(q, task, self._managed):
                return None
            rows = q("SELECT version, creation_time, source, run_id FROM model_versions "
                     "WHERE {ws} AND name = ? AND version = ? AND (current_stage IS NULL OR current_stage != ?)",
                     (_WS, task, int(version), DELETED_STAGE))
            return _with_tags(q, task, rows)[0] if rows else None

    def versions(self, task: str) -> list[dict[str, Any]]:
        """Every version of ``task`` (any status), newest first."""
        with self._session() as q:
            if not _managed(q, task, self._managed):
                return []
            rows = q("SELECT version, creation_time, source, run_id FROM model_versions "
                     "WHERE {ws} AND name = ? AND (current_stage IS NULL OR current_stage != ?) ORDER BY version DESC",
                     (_WS, task, DELETED_STAGE))
            return _with_tags(q, task, rows) if rows else []

    def latest_ready(self, task: str) -> dict[str, Any] | None:
        """The highest version tagged ready and not archived."""
        with self._session() as q:
            if not _managed(q, task, self._managed):
                return None
            rows = q("SELECT mv.version, mv.creation_time, mv.source, mv.run_id FROM model_versions mv "
                     "WHERE {ws_mv} AND mv.name = ? AND (mv.current_stage IS NULL OR mv.current_stage != ?) "
                     "AND EXISTS (SELECT 1 FROM model_version_tags t WHERE {ws_join}t.name = mv.name "
                     "            AND t.version = mv.version AND t.key = ? AND t.value = ?) "
                     "AND NOT EXISTS (SELECT 1 FROM model_version_tags t WHERE {ws_join}t.name = mv.name "
                     "                AND t.version = mv.version AND t.key = ? AND t.value = 'true') "
                     "ORDER BY mv.version DESC LIMIT 1",
                     (_WS, task, DELETED_STAGE, self._status, self._ready, self._archived))
            return _with_tags(q, task, rows)[0] if rows else None


    def model_versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of any registered model (managed or not, e.g. the router), newest first."""
        with self._session() as q:
            rows = q("SELECT version, creation_time, source, run_id FROM model_versions "
                     "WHERE {ws} AND name = ? AND (current_stage IS NULL OR current_stage != ?) ORDER BY version DESC",
                     (_WS, name, DELETED_STAGE))
            return _with_tags(q, name, rows) if rows else []


def _managed(q: Callable, task: str, managed_tag: str) -> bool:
    rows = q("SELECT value FROM registered_model_tags WHERE {ws} AND name = ? AND key = ?", (_WS, task, managed_tag))
    return bool(rows) and rows[0][0] == "true"


def _with_tags(q: Callable, task: str, rows: list[tuple]) -> list[dict[str, Any]]:
    wanted = [int(r[0]) for r in rows]
    if len(wanted) == 1:
        tag_rows = q("SELECT version, key, value FROM model_version_tags WHERE {ws} AND name = ? AND version = ?",
                     (_WS, task, wanted[0]))
    else:
        tag_rows = q("SELECT version, key, value FROM model_version_tags WHERE {ws} AND name = ?", (_WS, task))
    alias_rows = q("SELECT alias, version FROM registered_model_aliases WHERE {ws} AND name = ?", (_WS, task))
    tags: dict[int, dict[str, str]] = {v: {} for v in wanted}
    for v, k, val in tag_rows:
        if int(v) in tags:
            tags[int(v)][k] = val
    aliases: dict[int, list[str]] = {}
    for a, v in alias_rows:
        aliases.setdefault(int(v), []).append(a)
    return [
        {"task": task, "version": int(v), "created_ms": int(ct or 0), "source": src or "", "run_id": run_id or "",
         "tags": tags[int(v)], "aliases": sorted(aliases.get(int(v), []))}
        for v, ct, src, run_id in rows
    ]


class _WsMarker:
    """Placeholder argument for the workspace value (dropped when the schema has no workspaces)."""


_WS = _WsMarker()
