"""The ``adaptreg`` command line.

This module and the command modules import only click at module level: heavy libraries
(torch, transformers, peft, mlflow) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .._version import __version__
from ..errors import AdaptregError

# Each module defines ``register(group)``. Order = order in --help.
_COMMAND_MODULES = ["onboard", "data", "registry", "compose", "serve", "bench"]


def _debug() -> bool:
    return os.environ.get("ADAPTREG_DEBUG", "") not in ("", "0", "false", "no")


class AdaptregGroup(click.Group):
    """A click group that turns errors into one line on stderr (tracebacks with ADAPTREG_DEBUG=1).

    Usage errors (an unknown option, a bad value) too: click's usual three lines (usage, a hint,
    the error) become ``error: <what> (see `adaptreg CMD --help`)``, exit status 2.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            ctx = exc.ctx
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted: nothing was written", err=True)
            sys.exit(1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        # non-standalone click returns the code of an explicit ctx.exit(); commands return None
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except AdaptregError as exc:
            if _debug():
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if _debug():
                raise
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
            if _debug():
                raise
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"error: unexpected {type(exc).__name__}: {msg} (rerun with ADAPTREG_DEBUG=1 for the traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=AdaptregGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="adaptreg")
@click.option("-v", "--verbose", is_flag=True, help="Debug log lines on stderr.")
def main(verbose: bool) -> None:
    """Continual-learning adapter manager and registry.

    Onboard a task as a LoRA adapter on a frozen base, keep every version in an MLflow
    registry, route, merge and stack adapters, and measure forgetting.

    \b
    Examples:
      adaptreg data fetch bbc-news
      adaptreg onboard news --data bbc-news --base minilm
      adaptreg list
      adaptreg lookup news --alias production --json
    """
    import logging

    debug = verbose or _debug()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if debug else "%(message)s"))
    root = logging.getLogger("adaptreg")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    if not debug:  # MLflow's INFO lines and alembic's migration chatter are noise on a command line
        for name in ("mlflow", "alembic", "sqlalchemy", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)


for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(main)


def run() -> None:  # console-script entry point
    main(prog_name="adaptreg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
