"""The registry on a team set-up: ``mlflow server`` on a real PostgreSQL (no mocks).

A module fixture runs ``initdb``/``pg_ctl`` from Debian's ``postgresql`` package (``.ci/run``
installs it) on 127.0.0.1 and a free port, and ``mlflow server`` with two workers on it. The
tests race processes against that server: four registrations at once, a registration killed
midway, promote against archive, and lookups from a client with an empty cache.

Without PostgreSQL the tests are skipped, unless ``ADAPTREG_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), where they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from adaptreg.errors import IntegrityError, NotFoundError, RegistryError
from adaptreg.registry import ARCHIVED_TAG, Registry
from test_registry import _flip_byte, _free_port, _stop_group, _wait_health, build_artifact  # tests/ is on sys.path (rootdir conftest)

pytestmark = pytest.mark.slow

REQUIRE_ENV = "ADAPTREG_REQUIRE_POSTGRES"
PG_USER = "postgres"  # the superuser initdb creates (trust auth on loopback only)
PG_DB = "adaptreg"
# The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, 2.0 to psycopg2.
PG_SCHEME = "postgresql+psycopg2"


def _unavailable(reason: str):
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: PostgreSQL is required here)", pytrace=False)
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.parent.name.split(".")])
    return Path(found[-1]).parent if found else None


def _as_pg(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL server command; as root, as the ``postgres`` user (postgres refuses root)."""
    if os.geteuid() == 0:
        if shutil.which("runuser"):
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        else:
            cmd = ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


@pytest.fixture(scope="module")
def pg_launched(tmp_path_factory):
    """A fresh PostgreSQL cluster and ``mlflow server`` (2 workers) on it, started, maybe not up yet.

    Yields ``(url, process, log path)``; :func:`pg_server` waits for it.
    """
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                     "`apt-get install postgresql`, as .ci/run does)")
    try:
        import psycopg2  # noqa: F401 - the server's SQLAlchemy driver (PG_SCHEME)
    except ImportError:
        _unavailable("psycopg2 is not installed (`pip install -e '.[dev]'`)")
    if os.geteuid() == 0:
        import pwd

        try:
            pg_uid, pg_gid = pwd.getpwnam("postgres")[2:4]
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run the PostgreSQL server as")

    # Not under pytest's tmp dir: that is 0700 root-owned, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="adaptreg-pg-"))
    if os.geteuid() == 0:
        os.chown(base, pg_uid, pg_gid)
    data, pg_log = base / "data", base / "postgres.log"
    pg_port = _free_port()
    while (port := _free_port()) == pg_port:
        pass
    work = tmp_path_factory.mktemp("pg-mlflow")
    started = False
    proc = log = None
    try:
        _as_pg([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync"], cwd=base, timeout=120)
        opts = (f"-c listen_addresses=127.0.0.1 -p {pg_port} -c unix_socket_directories={base} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        _as_pg([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(pg_log), "-o", opts, "-w", "-t", "60", "start"],
               cwd=base, timeout=90)
        started = True
        res = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", PG_USER, PG_DB],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"createdb failed: {res.stderr[-2000:]}"

        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", f"{PG_SCHEME}://{PG_USER}@127.0.0.1:{pg_port}/{PG_DB}",
               "--artifacts-destination", str(work / "artifacts"), "--workers", "2"]
        log = open(work / "server.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
        yield f"http://127.0.0.1:{port}", proc, work / "server.log"
    finally:
        if proc is not None:
            _stop_group(proc, grace=3)  # its state is in PostgreSQL: no need to wait long
        if log is not None:
            log.close()
        if started:
            with contextlib.suppress(Exception):
                _as_pg([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                       cwd=base, timeout=90)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server(pg_launched, pg_arts) -> str:
    """The server's URL once it answers /health.

    It asks for ``pg_arts`` so that the artifacts are built while the server creates its schema
    (MLflow's migrations on an empty PostgreSQL database take 20-25 s here).
    """
    url, proc, log = pg_launched
    _wait_health(url, proc, log, timeout=150)
    return url


@pytest.fixture(scope="module")
def base_fp(tiny_base) -> str:
    from adaptreg.base import load_base

    return load_base(str(tiny_base)).fingerprint


@pytest.fixture(scope="module")
def pg_arts(pg_launched, tmp_path_factory, tiny_base, base_fp) -> list[Path]:
    """Four distinct artifacts (seeds 0-3; accuracies 0.70, 0.75, 0.80, 0.85)."""
    root = tmp_path_factory.mktemp("pg-artifacts")
    return [build_artifact(root / f"s{i}", tiny_base, base_fp, seed=i, acc=0.7 + 0.05 * i) for i in range(4)]


# -- worker processes -------------------------------------------------------------------------------
#
# Real processes, started by a forkserver that imported mlflow once: a fresh interpreter per
# worker would spend seconds of the 2 CPUs importing it (four at once: ~9 s before any write).


def _ctx():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow", "adaptreg.registry"])  # used when the forkserver first starts
    return ctx


def _guarded(conn, fn, *args) -> None:
    """Run ``fn`` in a worker and send ``("ok", result)`` or ``("error", traceback)`` back."""
    try:
        conn.send(("ok", fn(*args)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


def _receive(conn, proc, timeout: float):
    if not conn.poll(timeout):
        raise AssertionError(f"worker {proc.name} gave no answer in {timeout:.0f} s (exit code {proc.exitcode})")
    status, value = conn.recv()
    assert status == "ok", f"worker {proc.name} failed:\n{value}"
    return value


@contextlib.contextmanager
def _workers(procs):
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        for p in procs:
            p.join(timeout=15)
            if p.is_alive():
                p.kill()
                p.join(timeout=15)


# -- four registrations at once -----------------------------------------------------------------


def _register_at_barrier(url: str, art: str, task: str, cache: str, barrier, conn) -> None:
    def run():
        reg = Registry(url, cache_dir=cache)
        reg.client  # noqa: B018 - connect before the barrier, so that the writes start together
        barrier.wait(timeout=120)
        return reg.register(art, task=task)["version"]

    _guarded(conn, run)


def test_four_processes_register_at_once(pg_server, pg_arts, tmp_path):
    ctx = _ctx()
    barrier = ctx.Barrier(len(pg_arts))
    pipes = [ctx.Pipe(duplex=False) for _ in pg_arts]
    procs = [ctx.Process(target=_register_at_barrier, name=f"register-{i}",
                         args=(pg_server, str(art), "news", str(tmp_path / f"c{i}"), barrier, w))
             for i, (art, (_, w)) in enumerate(zip(pg_arts, pipes))]
    with _workers(procs):
        got = [_receive(r, p, timeout=180) for (r, _), p in zip(pipes, procs)]
    assert all(p.exitcode == 0 for p in procs)
    assert sorted(got) == [1, 2, 3, 4]

    reg = Registry(pg_server, cache_dir=tmp_path / "check")
    versions = reg.versions("news", all=True)
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert all(v["status"] == "ready" and not v["archived"] for v in versions)
    assert len({v["run_id"] for v in versions}) == 4
    # each process's artifact is the version it was told it got
    expected = {v: json.loads((art / "manifest.json").read_text())["metrics"]["test_accuracy"]
                for v, art in zip(got, pg_arts)}
    for v, acc in expected.items():
        rec = reg.load("news", version=v)
        assert rec["manifest"]["metrics"]["test_accuracy"] == acc
    assert reg.lookup("news")["version"] == 4
    assert reg.lookup("news", best="test_accuracy")["version"] == max(expected, key=expected.get)


def _register_and_die(url: str, art: str, cache: str) -> None:
    import tempfile

    from adaptreg.registry import store

    # killed, this process cannot remove its temporary files: keep them under the test's directory
    tempfile.tempdir = str(Path(cache).parent)
    # fault injection from the test: SIGKILL this process once its version exists
    store.fault_hook = lambda where: os.kill(os.getpid(), signal.SIGKILL) if where == "after_version" else None
    Registry(url, cache_dir=cache).register(art, task="crash")


def test_killed_registration_stays_invisible_on_the_server(pg_server, pg_arts, tmp_path):
    """The ready protocol over HTTP: a version whose registration was killed is never returned."""
    proc = _ctx().Process(target=_register_and_die, args=(pg_server, str(pg_arts[3]), str(tmp_path / "killed")))
    with _workers([proc]):
        proc.join(timeout=180)
    assert proc.exitcode == -signal.SIGKILL
    reg = Registry(pg_server, cache_dir=tmp_path / "cache")
    assert [(v["version"], v["status"]) for v in reg.versions("crash", all=True)] == [(1, "pending")]
    assert reg.versions("crash") == []
    with pytest.raises(NotFoundError, match="no ready version"):
        reg.lookup("crash")
    with pytest.raises(NotFoundError, match="registration did not complete"):
        reg.lookup("crash", version=1)
    with pytest.raises(NotFoundError):
        reg.promote("crash", 1, "production")
    assert reg.register(pg_arts[3], task="crash")["version"] == 2
    assert reg.lookup("crash")["version"] == 2


# -- promote against archive ----------------------------------------------------------------------


def _racer(url: str, cache: str, task: str, action: str, conn) -> None:
    """Promote or archive on command: ``(version, start_at)`` per trial, ``None`` to stop."""
    def warm():
        reg = Registry(url, cache_dir=cache)
        reg.lookup(task, version=1)  # connected, files cached: a trial times only the two calls
        return reg

    try:
        reg = warm()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", "ready"))
    while (cmd := conn.recv()) is not None:
        version, at = cmd
        time.sleep(max(0.0, at - time.time()))
        t0 = time.time()
        try:
            if action == "promote":
                reg.promote(task, version, "production")
            else:
                reg.archive(task, version)
            out = "done"
        except RegistryError as exc:  # promote refuses an archived version (or takes the alias back)
            out = "refused: " + str(exc)
        except BaseException:
            conn.send(("error", traceback.format_exc()))
            return
        conn.send(("ok", (out, round(1000 * (time.time() - t0)))))


def _violations(reg: Registry, task: str) -> list[str]:
    """What breaks "no alias points at an archived version", as seen by a reader."""
    bad = [f"version {r['version']} is archived but has aliases {r['aliases']}"
           for r in reg.versions(task, all=True) if r["archived"] and r["aliases"]]
    try:
        rec = reg.lookup(task, alias="production")
    except NotFoundError:
        pass
    else:
        if rec["archived"]:
            bad.append(f"lookup(alias='production') returned archived version {rec['version']}")
    return bad


def _reset(reg: Registry, task: str, version: int) -> None:
    """Unarchive and unpromote (directly through MLflow: adaptreg has no unarchive)."""
    client = reg.client
    with contextlib.suppress(Exception):
        client.delete_model_version_tag(task, str(version), ARCHIVED_TAG)
    with contextlib.suppress(Exception):
        client.delete_registered_model_alias(task, "production")


def test_promote_archive_race_leaves_no_alias_on_an_archived_version(pg_server, pg_arts, tmp_path):
    task = "race"
    reg = Registry(pg_server, cache_dir=tmp_path / "main")
    assert reg.register(pg_arts[0], task=task)["version"] == 1
    ctx = _ctx()
    pipes = {action: ctx.Pipe() for action in ("promote", "archive")}
    procs = {action: ctx.Process(target=_racer, name=action,
                                 args=(pg_server, str(tmp_path / action), task, action, pipes[action][1]))
             for action in pipes}
    rng = random.Random(13)
    outcomes, problems = [], []
    with _workers(list(procs.values())):
        try:
            for action, (conn, _) in pipes.items():
                assert _receive(conn, procs[action], timeout=120) == "ready"
            for trial in range(8):
                _reset(reg, task, 1)
                at = time.time() + 0.1
                skew = rng.uniform(-0.03, 0.03)  # who starts first, and by how much, varies per trial
                pipes["promote"][0].send((1, at + max(skew, 0.0)))
                pipes["archive"][0].send((1, at + max(-skew, 0.0)))
                (promoted, p_ms), (archived, a_ms) = (_receive(pipes[a][0], procs[a], timeout=60)
                                                      for a in ("promote", "archive"))
                assert archived == "done"
                assert promoted == "done" or "archived" in promoted, promoted
                outcomes.append(f"skew {skew * 1000:+.0f} ms: promote {p_ms} ms "
                                f"{'done' if promoted == 'done' else 'refused'}, archive {a_ms} ms")
                problems += [f"trial {trial}: {b}" for b in _violations(reg, task)]
                # whatever the order, the version ends archived (archive never fails)
                assert reg.versions(task, all=True)[0]["archived"]
        finally:
            for conn, _ in pipes.values():
                with contextlib.suppress(OSError):
                    conn.send(None)
    assert not problems, "invariant broken:\n" + "\n".join(problems) + "\ntrials:\n" + "\n".join(outcomes)


def test_promote_interleaved_with_archive_worst_case(pg_server, pg_arts, tmp_path):
    """Archive lands between promote's check (not archived) and promote's alias write."""
    task = "race-promote"
    reg = Registry(pg_server, cache_dir=tmp_path / "a")
    other = Registry(pg_server, cache_dir=tmp_path / "b")
    v = reg.register(pg_arts[1], task=task)["version"]
    client = reg.client
    real = client.set_registered_model_alias
    fired = []

    def set_alias(*args, **kwargs):
        if not fired:
            fired.append(other.archive(task, v))  # another client archives first
        return real(*args, **kwargs)

    client.set_registered_model_alias = set_alias
    try:
        with contextlib.suppress(RegistryError):  # the fixed promote may report the archive
            reg.promote(task, v, "production")
    finally:
        del client.set_registered_model_alias
    assert fired and fired[0]["archived"]
    assert _violations(Registry(pg_server, cache_dir=tmp_path / "c"), task) == []


def test_archive_interleaved_with_promote_worst_case(pg_server, pg_arts, tmp_path):
    """Promote lands between archive's read of the aliases (none) and archive's archived-tag write."""
    task = "race-archive"
    reg = Registry(pg_server, cache_dir=tmp_path / "a")
    other = Registry(pg_server, cache_dir=tmp_path / "b")
    v = reg.register(pg_arts[2], task=task)["version"]
    client = reg.client
    real = client.set_model_version_tag
    fired = []

    def set_tag(name, version, key, value):
        if key == ARCHIVED_TAG and not fired:
            fired.append(other.promote(task, v, "production"))  # another client promotes first
        return real(name, version, key, value)

    client.set_model_version_tag = set_tag
    try:
        reg.archive(task, v)
    finally:
        del client.set_model_version_tag
    assert fired and fired[0]["aliases"] == ["production"]
    fresh = Registry(pg_server, cache_dir=tmp_path / "c")
    assert fresh.versions(task, all=True)[0]["archived"]
    assert _violations(fresh, task) == []


# -- lookups from a fresh client ---------------------------------------------------------------------


def test_fresh_client_downloads_and_verifies(pg_server, pg_arts, tmp_path, base_fp):
    task = "lookups"
    writer = Registry(pg_server, cache_dir=tmp_path / "writer")
    assert [writer.register(a, task=task)["version"] for a in pg_arts[:2]] == [1, 2]
    writer.promote(task, 1, "production")

    fresh = Registry(pg_server, cache_dir=tmp_path / "fresh")  # nothing cached: every lookup downloads
    assert fresh.location.kind == "http"
    rec = fresh.lookup(task)  # default: alias production
    assert rec["version"] == 1 and rec["aliases"] == ["production"] and rec["source"].startswith("mlflow-artifacts:")
    path = Path(rec["path"])
    assert path.is_relative_to(tmp_path / "fresh") and path.name == rec["manifest_sha256"]
    assert fresh.lookup(task, version=2, verify=True)["version"] == 2
    assert fresh.lookup(task, best="test_accuracy")["version"] == 2  # acc 0.75 > 0.70
    loaded = fresh.load(task, alias="production", base=base_fp)
    assert loaded["manifest"]["metrics"]["test_accuracy"] == pytest.approx(0.7)
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == sorted(
        r["manifest_sha256"] for r in fresh.versions(task))  # one verified directory per version, no leftovers
    assert any(t["task"] == task and t["latest"] == 2 for t in fresh.list_tasks())

    _flip_byte(path / "adapter_model.safetensors")  # the cache is checked on load, not trusted
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        fresh.load(task, alias="production")
