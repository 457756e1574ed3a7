"""Registry commands: list, show, lookup, promote, archive, diff, compare.

Module level imports click only; ``adaptreg.registry`` is imported inside each command, and it
imports mlflow only for writes (lookups and listings of local registries read SQLite directly).
"""

from __future__ import annotations

from typing import Any

import click

from ._common import emit, json_option, log, registry_option

_VERSION_COLUMNS = ["version", "status", "aliases", "kind", "rank", "epochs", "serves", "test_accuracy",
                    "probe_test_accuracy", "gain_test_points", "test_macro_f1", "created_at"]


def _open(registry: str | None) -> Any:
    from ..registry import Registry

    return Registry(registry)


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()) or "-"


def _vs_probe(m: dict[str, Any]) -> str:
    """``  test 97.18% vs probe 95.07% (+2.11 pts)`` when the version records both."""
    a, p = m.get("test_accuracy"), m.get("probe_test_accuracy")
    if a is None or p is None:
        return ""
    return f"  test {100 * a:.2f}% vs probe {100 * p:.2f}% ({100 * (a - p):+.2f} pts)"


def _human_record(r: dict[str, Any]) -> str:
    aliases = f" [{', '.join(r['aliases'])}]" if r.get("aliases") else ""
    flags = " (archived)" if r.get("archived") else ""
    lines = [
        f"{r['task']} version {r['version']}{aliases}{flags}",
        f"  path:     {r.get('path') or r.get('source')}",
        f"  base:     {r['base']['id']} ({r['base']['fingerprint']})",
        f"  adapter:  {r['adapter']['kind']} rank {r['adapter']['rank']} on {','.join(r['adapter']['targets'])}",
        f"  data:     {r.get('data_fingerprint')}",
        f"  created:  {r.get('created_at')}  run {r.get('run_id')}",
        f"  serves:   {r.get('serves', 'adapter')}" + _vs_probe(r.get("metrics") or {}),
        f"  metrics:  {_fmt_metrics(r.get('metrics') or {})}",
    ]
    if r.get("parents"):
        lines.append("  parents:  " + ", ".join(f"{p.get('task')}@{p.get('version')}" for p in r["parents"]))
    if r.get("params"):
        lines.append("  params:")
        lines += [f"    {k} = {v}" for k, v in r["params"].items()]
    return "\n".join(lines)


def register(group: click.Group) -> None:
    @group.command("list")
    @click.option("--all", "show_all", is_flag=True, help="Also list tasks whose versions are all archived or incomplete.")
    @registry_option
    @json_option
    def list_cmd(show_all: bool, registry: str | None, as_json: bool) -> None:
        """List tasks: latest version, aliases and best test accuracy.

        \b
        Examples:
          adaptreg list
          adaptreg list --json --registry http://127.0.0.1:5000
        """
        from ..registry import render_table

        rows = _open(registry).list_tasks(all=show_all)
        if not rows and not as_json:
            log("no tasks registered yet: run `adaptreg onboard TASK --data ...`")
        emit(rows, as_json, lambda rs: render_table(rs, ["task", "latest", "versions", "aliases", "best_test_accuracy",
                                                         "updated_at"]))

    @group.command("show")
    @click.argument("task")
    @click.option("--version", "version", default=None, metavar="N", help="One version.")
    @click.option("--alias", default=None, metavar="NAME", help="The version an alias points at.")
    @click.option("--all", "show_all", is_flag=True, help="Also list archived and incomplete versions.")
    @registry_option
    @json_option
    def show_cmd(task: str, version: str | None, alias: str | None, show_all: bool, registry: str | None,
                 as_json: bool) -> None:
        """Show a task's versions, or one version with its run's parameters.

        \b
        Examples:
          adaptreg show news
          adaptreg show news --version 2 --json
          adaptreg show news --alias production
        """
        from ..registry import render_table

        data = _open(registry).show(task, version=version, alias=alias, all=show_all)

        def human(d: dict[str, Any]) -> str:
            if "versions" not in d:
                return _human_record(d)
            aliases = ", ".join(f"{a}={v}" for a, v in (d["aliases"] or {}).items()) or "-"
            rows = [{**r, "kind": r["adapter"]["kind"], "rank": r["adapter"]["rank"],
                     "status": "archived" if r["archived"] else r["status"],
                     "test_accuracy": r["metrics"].get("test_accuracy"),
                     "probe_test_accuracy": r["metrics"].get("probe_test_accuracy"),
                     "gain_test_points": r["metrics"].get("gain_test_points"),
                     "test_macro_f1": r["metrics"].get("test_macro_f1")} for r in d["versions"]]
            return f"{d['task']}  latest: {d['latest'] or '-'}  aliases: {aliases}\n" + render_table(rows, _VERSION_COLUMNS)

        emit(data, as_json, human)

    @group.command("lookup")
    @click.argument("task")
    @click.option("--version", "version", default=None, metavar="N", help="A version number.")
    @click.option("--alias", default=None, metavar="NAME", help="An alias, e.g. production.")
    @click.option("--best", default=None, metavar="METRIC", help="The ready version with the best value of METRIC.")
    @click.option("--verify", is_flag=True, help="Also check the sha256 of every file.")
    @click.option("--path", "path_only", is_flag=True, help="Print only the local adapter directory.")
    @registry_option
    @json_option
    def lookup_cmd(task: str, version: str | None, alias: str | None, best: str | None, verify: bool,
                   path_only: bool, registry: str | None, as_json: bool) -> None:
        """Resolve a version and print its metrics, base and local adapter path.

        Without a selector: alias 'production' if set, else the latest ready, unarchived version.

        \b
        Examples:
          adaptreg lookup news
          adaptreg lookup news --alias production --json
          adaptreg lookup news --best test_macro_f1 --path
        """
        rec = _open(registry).lookup(task, version=version, alias=alias, best=best, verify=verify)
        if path_only and not as_json:
            click.echo(rec["path"])
            return
        emit(rec, as_json, _human_record)

    @group.command("promote")
    @click.argument("task")
    @click.argument("version")
    @click.option("--alias", default="production", show_default=True, metavar="NAME", help="The alias to set.")
    @registry_option
    @json_option
    def promote_cmd(task: str, version: str, alias: str, registry: str | None, as_json: bool) -> None:
        """Point an alias (default production) at a version.

        \b
        Examples:
          adaptreg promote news 2 --alias production
          adaptreg promote news 3 --alias staging
        """
        rec = _open(registry).promote(task, version, alias)
        emit(rec, as_json, lambda r: f"{r['task']}: alias {alias} -> version {r['version']}")

    @group.command("archive")
    @click.argument("task")
    @click.argument("version")
    @click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
    @registry_option
    @json_option
    def archive_cmd(task: str, version: str, yes: bool, registry: str | None, as_json: bool) -> None:
        """Archive a version: hidden from latest/best lookups, its aliases dropped, files kept.

        \b
        Examples:
          adaptreg archive news 1 --yes
          adaptreg show news --all
        """
        if not yes:
            click.confirm(f"Archive {task} version {version} (its aliases are dropped)?", abort=True, err=True)
        rec = _open(registry).archive(task, version)
        dropped = rec.get("dropped_aliases") or []
        emit(rec, as_json, lambda r: f"archived {r['task']} version {r['version']}"
             + (f" (dropped aliases: {', '.join(dropped)})" if dropped else ""))

    @group.command("diff")
    @click.argument("task")
    @click.argument("v1")
    @click.argument("v2")
    @click.option("--changed", is_flag=True, help="Show only rows that differ.")
    @registry_option
    @json_option
    def diff_cmd(task: str, v1: str, v2: str, changed: bool, registry: str | None, as_json: bool) -> None:
        """Parameters, metrics and tags of two versions side by side ('*' marks differences).

        \b
        Examples:
          adaptreg diff news 1 2
          adaptreg diff news 1 2 --changed --json
        """
        from ..registry import render_table

        data = _open(registry).diff(task, v1, v2)
        if changed:
            data = {**data, **{s: [r for r in data[s] if r["differs"]] for s in ("params", "metrics", "tags")}}

        def human(d: dict[str, Any]) -> str:
            out = []
            for section in ("params", "metrics", "tags"):
                rows = [{"": "*" if r["differs"] else "", "name": r["name"], f"v{d['v1']}": r["v1"],
                         f"v{d['v2']}": r["v2"]} for r in d[section]]
                out.append(f"== {section}\n" + render_table(rows, ["", "name", f"v{d['v1']}", f"v{d['v2']}"]))
            return "\n".join(out)

        emit(data, as_json, human)

    @group.command("compare")
    @click.argument("tasks", nargs=-1)
    @click.option("--metric", default="test_accuracy", show_default=True, help="Sort by this metric (descending).")
    # "json" stays accepted for one release (deprecated: --json, as on every command)
    @click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
                  metavar="[table|csv]", help="Table or CSV on stdout (for JSON: --json).")
    @click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="PNG", help="Save a bar chart.")
    @click.option("--all", "show_all", is_flag=True, help="Include archived versions.")
    @registry_option
    @json_option
    def compare_cmd(tasks: tuple[str, ...], metric: str, fmt: str, plot: str | None, show_all: bool,
                    registry: str | None, as_json: bool) -> None:
        """One row per version across tasks, best METRIC first.

        \b
        Examples:
          adaptreg compare
          adaptreg compare news sst2 --metric test_macro_f1 --format csv
          adaptreg compare --plot compare.png
          adaptreg compare news --json
        """
        if fmt == "json":
            log("warning: --format json is deprecated; use --json")
            as_json = True
        if plot:
            from .._util import check_output_file

            check_output_file(plot, "--plot", overwrite=True)  # an existing chart is replaced, as before
        text = _open(registry).compare(list(tasks) or None, metric=metric, fmt="json" if as_json else fmt,
                                       plot=plot, all=show_all)
        click.echo(text)
        if plot:
            log(f"plot written to {plot}")

    @group.command("doctor")
    @click.option("--repair", is_flag=True, help="Fix what can be fixed (stale registrations, aliases on archived "
                  "versions, versions missing from the router).")
    @click.option("--grace", "grace_s", type=click.FloatRange(0), default=3600.0, show_default=True, metavar="SECONDS",
                  help="A pending registration from another host counts as dead after this long.")
    @click.option("--base", default=None, help="Base for router repairs (default: the one each version records).")
    @registry_option
    @json_option
    def doctor_cmd(repair: bool, grace_s: float, base: str | None, registry: str | None, as_json: bool) -> None:
        """Check a registry: files, interrupted registrations, the router, aliases. Exit 1 if damage remains.

        \b
        Examples:
          adaptreg doctor
          adaptreg doctor --repair --json
        """
        from ..registry.doctor import check

        report = check(registry, repair=repair, base=base, grace_s=grace_s)
        emit(report, as_json, _doctor_human)
        if report["damage"]:
            raise SystemExit(1)


def _doctor_human(r: dict[str, Any]) -> str:
    lines = []
    for f in r["findings"]:
        state = "repaired" if f["repaired"] else ("in progress" if f["kind"] == "in_progress" else "DAMAGE")
        fix = f"  fix: {f['fix']}" if f["fix"] and not f["repaired"] else ""
        err = f"  (repair failed: {f['repair_error']})" if f.get("repair_error") else ""
        lines.append(f"{state:<11} {f['kind']:<18} {f['target']}: {f['detail']}{fix}{err}")
    if r["damage"]:
        lines.append(f"{r['registry']}: {r['damage']} problem(s) remain"
                     + ("" if any(f["repaired"] for f in r["findings"]) else "; `adaptreg doctor --repair` fixes "
                        "what it can"))
    else:
        lines.append(f"{r['registry']}: clean" + (f" ({r['repaired']} repaired)" if r["repaired"] else ""))
    return "\n".join(lines)
