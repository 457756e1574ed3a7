"""Immutable snapshots of what is served, and the watcher that swaps in new ones (hot swap).

A :class:`Snapshot` is a :class:`~adaptreg.compose.predict.Predictor` together with the version
of each task it serves and the router version it routes with, for one alias. It never changes:
a request takes the current snapshot when it arrives and keeps it until it is answered, so a
``promote`` or ``archive`` landing meanwhile cannot change the version that answers it, and each
answer names the version that did.

:class:`SnapshotManager` keeps one snapshot per alias in use (the default alias always, others as
requests name them, at most ``max_aliases``). Its watcher thread reads the registry every
``poll_s`` seconds: the version each task would serve under the alias (the same rule as the
Predictor: the alias where set on the task, else ``production``, else the latest ready version),
the tasks present and the latest router version. Those are cheap reads (SQLite, no MLflow import
on a local registry). When they differ from a snapshot's, it builds a new snapshot off the
request path (adapters verified, changed branches loaded into the shared :class:`BranchCache`)
and swaps a reference: requests arriving after that see the new one.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import AdaptregError, NotFoundError
from .cache import BranchCache
from .settings import ServeSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One alias's served state: never mutated after it is built."""

    id: int
    alias: str
    predictor: Any = field(repr=False)
    versions: Mapping[str, int | None]  # task -> version that answers for it
    router_version: int | None
    built_at: float  # time.time()

    @property
    def tasks(self) -> list[str]:
        return list(self.versions)

    def state(self) -> tuple[tuple[tuple[str, int | None], ...], int | None]:
        return tuple(sorted(self.versions.items())), self.router_version


def _lookup(reg: Any, task: str, alias: str | None) -> dict[str, Any]:
    """The version the Predictor would load for ``task``
    (:func:`adaptreg.compose.predict.resolve_adapter`), without verifying its files."""
    if alias:
        try:
            return reg.lookup(task, alias=alias)
        except NotFoundError:
            pass
    return reg.lookup(task)


def served_state(reg: Any, alias: str, tasks: list[str] | None = None,
                 fingerprint: str | None = None) -> tuple[dict[str, int], int | None, dict[str, str]]:
    """``({task: version}, router version, {task: why it is left out})`` as the registry stands now.

    Tasks whose served version was built on another base than ``fingerprint`` are left out.
    """
    from ..compose.predict import task_names
    from ..compose.router import router_versions

    names = list(tasks) if tasks else task_names(reg)
    versions: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for t in names:
        try:
            rec = _lookup(reg, t, alias)
        except NotFoundError as exc:
            skipped[t] = str(exc)
            continue
        fp = (rec.get("base") or {}).get("fingerprint")
        if fingerprint and fp and fp != fingerprint:
            skipped[t] = f"version {rec['version']} was built on base {(rec.get('base') or {}).get('id')!r}, not the one served"
            continue
        versions[t] = int(rec["version"])
    rv = router_versions(reg)
    return versions, (rv[0]["version"] if rv else None), skipped


def branch_keys(predictor: Any) -> set[tuple[str, int]]:
    """The adapter-cache keys of ``predictor``'s branches (``Predictor._branch``'s key; probes have none)."""
    return {(str(Path(e.path).resolve()), predictor.split) for e in predictor._entries.values() if not e.identity}


class SnapshotManager:
    """The served snapshots, per alias, and the registry watcher that replaces them.

    ``registry`` and ``base`` default to ``settings.registry`` and ``settings.base`` (else the
    base the first task was built on). :meth:`start` builds the default alias's snapshot (errors
    surface there: an empty registry, a missing base) and starts the watcher when ``poll_s > 0``;
    :meth:`reload` checks at once (``POST /reload``). The default alias's branches are pinned in
    the adapter cache, and the pins follow its hot swaps.
    """

    def __init__(self, settings: ServeSettings, registry: Any = None, base: Any = None):
        self.settings = settings
        self._registry = registry
        self._base = base
        self.cache = BranchCache(settings.max_adapters)
        self._snaps: OrderedDict[str, Snapshot] = OrderedDict()
        self._lock = threading.Lock()  # guards _snaps (held for dictionary operations only)
        self._build_lock = threading.RLock()  # one build or poll at a time
        self._ids = itertools.count(1)
        self._failed: dict[str, Any] = {}  # alias -> registry state whose build failed (not retried until it changes)
        self._skipped: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_pins = False
        self.swaps = 0
        self.build_failures = 0
        self.last_poll: float | None = None
        self.last_error: str | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ set-up
    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ..registry import Registry

            self._registry = Registry(self.settings.registry)
        return self._registry

    @property
    def base(self) -> Any:
        if self._base is None or isinstance(self._base, str):
            self._base = self._load_base(self._base or self.settings.base)
        return self._base

    def _load_base(self, spec: str | None) -> Any:
        from ..base import load_base

        if spec:
            return load_base(spec)
        from ..compose.predict import task_names

        reg = self.registry
        names = self.settings.tasks or task_names(reg)
        if not names:
            raise NotFoundError(f"no tasks in the registry at {reg.location.display}: onboard one with `adaptreg onboard`")
        for t in names:
            base_id = (_lookup(reg, t, self.settings.alias).get("base") or {}).get("id")
            if base_id:
                logger.info("base: %s (the base task %r was built on)", base_id, t)
                return load_base(base_id)
        raise NotFoundError("cannot tell which base to load: pass --base")

    def start(self, watch: bool = True) -> SnapshotManager:
        """Build the default alias's snapshot, and start the watcher unless ``watch`` is False (idempotent)."""
        if self.current() is None:
            snap = self._build(self.settings.alias)
            with self._lock:
                self._snaps[snap.alias] = snap
            self._pin(snap)
            logger.debug("alias %r: serving %s (router version %s)", snap.alias, _describe(snap.versions),
                         snap.router_version)
        if watch and self.settings.poll_s > 0 and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="adaptreg-serve-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # ------------------------------------------------------------------ reads
    def current(self, alias: str | None = None) -> Snapshot | None:
        """The loaded snapshot of ``alias`` (default: the default alias), or None when not loaded."""
        alias = alias or self.settings.alias
        with self._lock:
            snap = self._snaps.get(alias)
            if snap is not None:
                self._snaps.move_to_end(alias)
            return snap

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            return list(self._snaps.values())

    def get(self, alias: str | None = None) -> Snapshot:
        """The snapshot of ``alias``, built now if it is not loaded (blocking: call it off the event loop).

        An alias other than the default must be set on at least one served task.
        """
        alias = alias or self.settings.alias
        snap = self.current(alias)
        if snap is not None:
            return snap
        from ..registry import validate_alias

        validate_alias(alias)
        with self._build_lock:
            snap = self.current(alias)  # another request may have built it meanwhile
            if snap is not None:
                return snap
            if alias != self.settings.alias:
                self._check_alias(alias)
            snap = self._build(alias)
            with self._lock:
                self._snaps[alias] = snap
                while len(self._snaps) > self.settings.max_aliases:
                    victim = next((a for a in self._snaps if a != self.settings.alias), None)
                    if victim is None:
                        break
                    del self._snaps[victim]
                    logger.info("alias %r unloaded (more than %d aliases in use)", victim, self.settings.max_aliases)
            logger.info("alias %r loaded: %s", alias, _describe(snap.versions))
            return snap

    def _check_alias(self, alias: str) -> None:
        rows = self.registry.list_tasks()
        wanted = set(self.settings.tasks or [r["task"] for r in rows])
        known = sorted({a for r in rows if r["task"] in wanted for a in (r.get("aliases") or {})})
        if alias not in known:
            raise NotFoundError(f"no served task has alias {alias!r} (aliases: {', '.join(known) or 'none'}); "
                                "set one with `adaptreg promote TASK VERSION --alias NAME`")

    def status(self) -> dict[str, Any]:
        return {"snapshots": [{"alias": s.alias, "id": s.id, "versions": dict(s.versions), "router_version": s.router_version,
                               "built_at": s.built_at} for s in self.snapshots()],
                "swaps": self.swaps, "build_failures": self.build_failures, "last_poll": self.last_poll,
                "last_error": self.last_error, "skipped": dict(self._skipped), "adapter_cache": self.cache.stats()}

    # ------------------------------------------------------------------ building and swapping
    def _build(self, alias: str, previous: Snapshot | None = None) -> Snapshot:
        from ..compose.predict import Predictor

        lb = self.base
        reg = self.registry
        versions, _, skipped = served_state(reg, alias, self.settings.tasks, lb.fingerprint)
        for t, why in skipped.items():
            if self._skipped.get(t) != why:
                logger.warning("not serving task %r: %s", t, why)
        self._skipped = skipped
        if not versions:
            if skipped:
                raise NotFoundError(f"no task can be served on base {lb.id}: " +
                                    "; ".join(f"{t}: {why}" for t, why in skipped.items()))
            raise NotFoundError(f"no tasks in the registry at {reg.location.display}: onboard one with `adaptreg onboard`")
        pred = Predictor(reg, base=lb, tasks=list(versions), alias=alias, router=None,
                         threshold=self.settings.threshold, branch_cache=self.cache, bf16=self.settings.bf16)
        served = {t: e.version for t, e in pred._entries.items()}  # what was loaded, even if it moved meanwhile
        router_version = getattr(pred.router, "registry_version_", None) if pred.router is not None else None
        if alias == self.settings.alias:
            # pin the new branches before folding them, or the old pins could evict them at once; the old
            # snapshot's requests may then fold an unpinned branch again, they cannot fail for it
            self.cache.pin(branch_keys(pred))
        # fold the branches this snapshot will need now, not on the first request that meets them
        changed = [t for t, v in served.items() if previous is None or previous.versions.get(t) != v]
        for t in changed[: self.settings.max_adapters]:
            pred._branch(pred._entries[t])
        return Snapshot(id=next(self._ids), alias=alias, predictor=pred, versions=MappingProxyType(served),
                        router_version=router_version, built_at=time.time())

    def refresh(self, retry_failed: bool = False,
                errors: list[dict[str, str]] | None = None) -> list[tuple[Snapshot, Snapshot]]:
        """Check the registry once; rebuild and swap every loaded alias whose served state changed.

        Returns ``[(old, new), ...]``. A failed build keeps the old snapshot (the error is logged,
        kept in :attr:`last_error` and appended to ``errors`` as ``{"alias", "error"}``) and is not
        retried until the registry changes again, or ``retry_failed`` is set (``POST /reload``).
        """
        swapped = []
        with self._build_lock:
            for old in self.snapshots():
                try:
                    versions, router_version, _ = served_state(self.registry, old.alias, self.settings.tasks,
                                                               self.base.fingerprint)
                except AdaptregError as exc:
                    self._fail(old.alias, None, exc, errors)
                    continue
                state = (tuple(sorted(versions.items())), router_version)
                if state == old.state() or (self._failed.get(old.alias) == state and not retry_failed):
                    continue
                try:
                    new = self._build(old.alias, previous=old)
                except Exception as exc:  # noqa: BLE001 - keep serving the old snapshot
                    self._fail(old.alias, state, exc, errors)
                    if old.alias == self.settings.alias:
                        self._pin(old)
                    continue
                self._failed.pop(old.alias, None)
                with self._lock:
                    if old.alias in self._snaps:
                        self._snaps[old.alias] = new
                if new.alias == self.settings.alias:
                    self._pin(new)
                self.swaps += 1
                self.last_error = None
                logger.info("alias %r: now serving %s (router version %s; was %s, router version %s)", old.alias,
                            _describe(new.versions), new.router_version, _describe(old.versions), old.router_version)
                swapped.append((old, new))
            self.last_poll = time.time()
        return swapped

    def _pin(self, snap: Snapshot) -> None:
        """Pin the default alias's branches in the adapter cache (other aliases evict only each other)."""
        keys = branch_keys(snap.predictor)
        self.cache.pin(keys)
        if len(keys) > self.cache.max_items and not self._warned_pins:
            self._warned_pins = True
            logger.warning("alias %r serves %d adapter branches, more than --max-adapters %d: they cannot all stay in "
                           "memory, the least recently used are loaded again when needed; raise --max-adapters",
                           snap.alias, len(keys), self.cache.max_items)

    def reload(self) -> dict[str, Any]:
        """Check the registry now (``POST /reload``), retrying failed builds; what changed and what is served.

        ``{"changed": [{"alias", "snapshot": [old, new], "versions": {task: [old, new]}, "router_version": [old, new]}],
        "errors": [{"alias", "error"}], "served": {alias: {"snapshot", "versions", "router_version"}}}``;
        in ``versions`` only the tasks whose version changed, ``null`` for a task added or removed.
        """
        errors: list[dict[str, str]] = []
        swapped = self.refresh(retry_failed=True, errors=errors)
        changed = []
        for old, new in swapped:
            tasks = list(dict.fromkeys([*old.versions, *new.versions]))
            changed.append({"alias": new.alias, "snapshot": [old.id, new.id],
                            "versions": {t: [old.versions.get(t), new.versions.get(t)] for t in tasks
                                         if old.versions.get(t) != new.versions.get(t)},
                            "router_version": [old.router_version, new.router_version]})
        served = {s.alias: {"snapshot": s.id, "versions": dict(s.versions), "router_version": s.router_version}
                  for s in self.snapshots()}
        return {"changed": changed, "errors": errors, "served": served}

    def _fail(self, alias: str, state: Any, exc: BaseException, errors: list[dict[str, str]] | None = None) -> None:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.last_error = f"alias {alias!r}: {msg}"
        if errors is not None:
            errors.append({"alias": alias, "error": msg})
        if state is not None:
            self._failed[alias] = state
            self.build_failures += 1
        logger.error("hot swap of alias %r failed, still serving the previous snapshot: %s", alias, msg)

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.poll_s):
            try:
                self.refresh()
            except Exception as exc:
                logger.exception("registry poll failed")
                self.last_error = f"poll: {exc}"


def _describe(versions: Mapping[str, Any]) -> str:
    return ", ".join(f"{t}@{v}" for t, v in versions.items()) or "nothing"
