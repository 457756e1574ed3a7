"""The :class:`Registry` facade: register, promote, archive, and every read.

Reads of local SQLite registries go through :mod:`adaptreg.registry.fast` (stdlib sqlite3,
no ``import mlflow``); every write through :class:`adaptreg.registry.store.Store`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .. import artifact
from .._util import sha256_file, to_json
from .._version import __version__
from ..errors import ConfigError, IntegrityError, NotFoundError, RegistryError

from .fast import SchemaMismatch, SqliteReader
from .location import db_error, default_cache_dir, resolve_location
from .records import (ADAPTER_PATH, ARCHIVED_TAG, COMPARE_COLUMNS, DEFAULT_ALIAS, EXPERIMENT, MANAGED_TAG,
                      METRIC_TAG, PENDING, PLOT_FILE, READY, STATUS_TAG, TAG, is_lower_better, is_number, is_usable,
                      iso_time, manifest_tags, parse_version, run_metrics, run_params, tag_value, validate_alias,
                      validate_task_name, version_record)
from .render import plot_compare, render_table
from .store import ClientReader, Store, is_not_found, nonfinite_tensors, refuse_pickles

logger = logging.getLogger(__name__)


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
        self.store = Store(self.location)
        self._fast_reader = None
        if self.location.db_path is not None and fast is not False:
            self._fast_reader = SqliteReader(self.location.db_path, MANAGED_TAG, STATUS_TAG, ARCHIVED_TAG, READY)

    def __repr__(self) -> str:
        return f"Registry({self.location.display!r})"

    # -- the store's write path, re-exported (one Store per Registry) ---------------------------

    @property
    def client(self) -> Any:
        """An ``MlflowClient`` with both URIs set explicitly (never MLflow's defaults)."""
        return self.store.client

    @property
    def _held(self) -> Any:
        return self.store._held

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return self.store._lock()

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the local registry's write lock around a read-modify-write (re-entrant; no-op remotely)."""
        return self.store.locked()

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one MLflow write under the local lock, retrying transient failures (:meth:`Store.write`)."""
        return self.store.write(fn, *args, **kwargs)

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        return self.store.experiment_id(name)

    def local_path(self, source: str) -> Path | None:
        """The local directory of a stored ``source`` URI (None for remote stores); see :meth:`Store.local_path`."""
        return self.store.local_path(source)

    def store_version(self, **kwargs: Any) -> int:
        """A new model version through the one write path (:meth:`Store.store_version`)."""
        return self.store.store_version(**kwargs)

    def _require_existing(self) -> None:
        self.store._require_existing()

    def _ensure_model(self, name: str, tags: dict[str, str], description: str) -> None:
        self.store._ensure_model(name, tags, description)

    def _read(self, method: str, *args: Any) -> Any:
        if self._fast_reader is not None:
            import sqlite3

            try:
                return getattr(self._fast_reader, method)(*args)
            except SchemaMismatch as exc:
                logger.warning("registry database schema not recognised (%s): reading through MLflow instead", exc)
                self._fast_reader = None
            except sqlite3.DatabaseError as exc:
                raise db_error(self.location.db_path, exc) from None  # type: ignore[arg-type]
        if self.location.kind == "dir" and not self.location.db_path.is_file():  # type: ignore[union-attr]
            return {"task_names": [], "aliases": None, "version": None, "versions": [], "latest_ready": None}[method]
        return getattr(ClientReader(self.client), method)(*args)

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
        refuse_pickles(d)
        manifest = artifact.verify(d)
        task = validate_task_name(task if task is not None else manifest.get("task", ""))
        extras = [Path(p) for p in extra_artifacts or []]
        for p in extras:
            if not p.exists():
                raise ConfigError(f"extra artifact {p} does not exist")
        manifest_sha = sha256_file(d / artifact.MANIFEST)
        from ..mlflow_model import MODEL_FILES, write_model_files

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
        raw = ClientReader(self.client).version(task, version)
        rec = version_record(raw)
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
            run_tags=run_tags, params=run_params(task, manifest), metrics=run_metrics(manifest),
            version_tags={**manifest_tags(manifest, manifest_sha), **(tags or {})}, check=check, log_extras=log_extras,
            description=f"{task}: {a.get('kind', '?')} rank {a.get('rank', '?')} on "
                        f"{(manifest.get('base') or {}).get('id', '?')}")

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
            reader = ClientReader(self.client)
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

    def _drop_alias(self, reader: "ClientReader", task: str, alias: str, version: int) -> None:
        if (reader.aliases(task) or {}).get(alias) == version:
            try:
                self.write(self.client.delete_registered_model_alias, task, alias)
            except Exception as exc:
                if not is_not_found(exc):
                    raise

    def archive(self, task: str, version: int | str) -> dict[str, Any]:
        """Hide a version from latest/best/default lookups and drop its aliases; its files stay."""
        self._require_existing()
        with self._lock():
            reader = ClientReader(self.client)
            raw = self._resolve(task, version=version, reader=reader, require_ready=False)
            v = raw["version"]
            self.write(self.client.set_model_version_tag, task, str(v), ARCHIVED_TAG, "true")
            dropped = sorted(a for a, target in (reader.aliases(task) or {}).items() if target == v)
            for alias in dropped:
                self._drop_alias(reader, task, alias, v)
            rec = version_record(reader.version(task, v))
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
            v = parse_version(version)
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
            candidates = [r for r in read("versions", task) if is_usable(r)]
            scored = [(float(tag_value(r["tags"][METRIC_TAG + best])), r["version"], r) for r in candidates
                      if is_number(tag_value(r["tags"].get(METRIC_TAG + best)))]
            if not scored:
                known = sorted({k[len(METRIC_TAG):] for r in candidates for k in r["tags"] if k.startswith(METRIC_TAG)})
                raise NotFoundError(f"no ready version of task {task!r} has metric {best!r} "
                                    f"(metrics: {', '.join(known) or 'none'})")
            sign = -1.0 if is_lower_better(best) else 1.0
            return max(scored, key=lambda s: (sign * s[0], s[1]))[2]
        if DEFAULT_ALIAS in aliases:
            raw = read("version", task, aliases[DEFAULT_ALIAS])
            if raw is not None and is_usable(raw):
                return raw
        raw = read("latest_ready", task)
        if raw is None:
            raise NotFoundError(f"task {task!r} has no ready version (`adaptreg show {task} --all` lists incomplete "
                                "and archived ones); register one")
        return raw

    def _with_path(self, raw: dict[str, Any], download: bool = True) -> dict[str, Any]:
        rec = version_record(raw)
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
        refuse_pickles(path)
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
        return [version_record(r) for r in raws if all or is_usable(r)]

    def list_tasks(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        """One row per task: latest usable version, aliases, number of versions, best test accuracy."""
        rows = []
        for name in self._read("task_names"):
            raws = self._read("versions", name)
            usable = [r for r in raws if is_usable(r)]
            shown = raws if all else usable
            if not shown:
                continue
            acc = [v for r in usable if is_number(v := tag_value(r["tags"].get(METRIC_TAG + "test_accuracy")))]
            rows.append({
                "task": name,
                "latest": usable[0]["version"] if usable else None,
                "versions": len(shown),
                "aliases": self._read("aliases", name) or {},
                "best_test_accuracy": max(acc) if acc else None,
                "updated_at": iso_time(max(r["created_ms"] for r in shown)),
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
            if not is_not_found(exc):
                raise
            rec["params"], rec["run_status"] = {}, None
        return rec

    def diff(self, task: str, v1: int | str, v2: int | str) -> dict[str, Any]:
        """Parameters, metrics and version tags of two versions side by side; ``differs`` marks changes."""
        reader = ClientReader(self.client)
        a = self._resolve(task, version=v1, reader=reader)
        b = self._resolve(task, version=v2, reader=reader)

        def run_data(raw: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
            try:
                run = self.client.get_run(raw["run_id"])
            except Exception as exc:
                if is_not_found(exc):
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
        if rows and not any(is_number(r.get(metric)) for r in rows):
            known = sorted({k for name in names for r in self.versions(name, all=True) for k in r["metrics"]})
            raise NotFoundError(f"no version has metric {metric!r} (metrics: {', '.join(known) or 'none'})")
        rows.sort(key=lambda r: (not is_number(r.get(metric)), -(r.get(metric) or 0.0), r["task"], r["version"]))
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


def as_registry(registry: "Registry | str | os.PathLike | None") -> Registry:
    """A Registry as given, or one opened at a location (None = the default ``./registry``)."""
    return registry if isinstance(registry, Registry) else Registry(registry)
