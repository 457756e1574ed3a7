"""Options and output helpers shared by command modules (click only: no heavy imports)."""

from __future__ import annotations

from typing import Any, Callable

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON document on stdout.")

registry_option = click.option(
    "--registry",
    envvar="ADAPTREG_REGISTRY",
    default=None,
    metavar="DIR|URI",
    help="Registry location: a directory (SQLite + artifacts), or an MLflow tracking URI such as "
    "http://127.0.0.1:5000. Default: ./registry (env ADAPTREG_REGISTRY).",
)


OUTPUT_DEPRECATED = ("warning: --output is deprecated for a folder; use --out DIR "
                     "(--output will be removed in the next release)")


def out_dir_options(help: str) -> Callable:
    """``--out DIR`` (a folder output) and the hidden ``--output DIR`` it replaces.

    The rule of every command: a folder is ``--out DIR``, a file is ``--output FILE``. The old
    folder spelling ``--output`` is accepted for one release; :func:`resolve_out_dir` warns about
    it. The command receives both as ``out`` and ``legacy_output``.
    """

    def decorate(f: Callable) -> Callable:
        f = click.option("--output", "legacy_output", default=None, metavar="DIR", hidden=True,
                         help="Deprecated spelling of --out (removed in the next release).")(f)
        return click.option("--out", "out", default=None, metavar="DIR", help=help)(f)

    return decorate


def resolve_out_dir(out: str | None, legacy_output: str | None, *, register: bool, overwrite: bool) -> str | None:
    """The folder asked for by ``--out`` or the deprecated ``--output`` (one stderr warning), checked
    before any work: both at once, or no folder while registration is off (nothing would be kept),
    is refused with one line (exit 2); the folder must be writable (:func:`adaptreg._util.check_output_dir`).
    """
    from ..errors import ConfigError  # plain-Python modules: no heavy import

    if legacy_output is not None:
        if out is not None:
            raise ConfigError(f"--out {out} and --output {legacy_output} both given: --output is the deprecated "
                              "spelling of --out; give --out DIR only")
        log(OUTPUT_DEPRECATED)
        out = legacy_output
    if out is None:
        if not register:
            raise ConfigError("nothing would be kept: give --out DIR or leave registration on")
        return None
    from .._util import check_output_dir

    check_output_dir(out, "--out", overwrite=overwrite)
    return out


def check_threshold(value: float | None, option: str = "--threshold") -> None:
    """The router's abstention threshold: a number > 0 (NaN compares false with everything)."""
    import math

    from ..errors import ConfigError

    if value is not None and (math.isnan(value) or not value > 0):
        raise ConfigError(f"{option} {value}: must be a number > 0 (a route_score above it gives 'unknown'; "
                          "default 1.0, larger abstains less)")


def comma_list(value: str | None, what: str) -> list[str] | None:
    """A comma-separated option (``--tasks A,B``) as a list of stripped items; None when not given."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"empty {what} list")
    return items


def emit(data: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Data goes to stdout: JSON when asked, else the human rendering."""
    if as_json or human is None:
        from .._util import to_json

        click.echo(to_json(data))
    else:
        click.echo(human(data))


def log(msg: str) -> None:
    """Progress and hints go to stderr so stdout stays parseable."""
    click.echo(msg, err=True)


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain fixed-width table; empty input gives a header only."""
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
