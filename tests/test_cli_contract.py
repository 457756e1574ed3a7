"""The command-line contract, checked on every command the ``adaptreg`` group has (issue #12).

* The set of commands is fixed here, module by module: deleting a command module, or a command,
  or adding one without listing it, fails ``test_the_command_set_is_the_documented_one``.
* Every command that reports takes ``--json`` (exceptions listed with the reason).
* Bad input -- an unknown option, or a value of the wrong type for a typed option -- exits 2
  with one ``error: ...`` line naming the option, nothing on stdout, and before the
  command's body runs (so before any registry or model is opened: the bodies are replaced by a
  function that fails the test).

No model is loaded and no registry is opened: the whole file runs in about a second.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from adaptreg.cli import _COMMAND_MODULES, main

CLI_DIR = Path(importlib.import_module("adaptreg.cli").__file__).parent

# module -> the commands it registers (paths under `adaptreg`)
EXPECTED = {
    "onboard": {"onboard"},
    "data": {"data list", "data fetch", "data split"},
    "registry": {"list", "show", "lookup", "promote", "archive", "diff", "compare", "doctor"},
    "compose": {"predict", "merge", "export", "route add", "route eval", "route show"},
    "serve": {"serve"},
    "bench": {"benchmark continual", "demo"},
}

# Commands without --json, and why.
NO_JSON = {
    "serve": "a long-running HTTP server: it prints only its URL on stdout, and its API answers in JSON",
}


def leaf_commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every command under ``group`` that is not itself a group, keyed by its path ('route add')."""
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(leaf_commands(cmd, prefix + (name,)))
        else:
            out[" ".join(prefix + (name,))] = cmd
    return out


COMMANDS = leaf_commands()
ALL = sorted(set().union(*EXPECTED.values()))


def minimal_args(cmd: click.Command) -> list[str]:
    """Values for the command's required arguments and options: enough for parsing to succeed."""
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        if isinstance(p, click.Argument):
            args += ["a", "b"] if p.nargs == -1 else ["x"] * p.nargs
        else:
            args += [p.opts[0], "a,b"]
    return args


def json_flag(path: str) -> list[str]:
    return [] if path in NO_JSON else ["--json"]


@pytest.fixture
def bodies_refused(monkeypatch):
    """Every command body fails the test if it runs: bad input must be refused while parsing."""

    def refuse(*a, **k):
        raise AssertionError("the command body ran: bad input was not refused before any work")

    for cmd in COMMANDS.values():
        monkeypatch.setattr(cmd, "callback", refuse)


def one_error_line(res, *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr (``error: ...``), containing every needle."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.stdout == "", res.stdout  # stdout stays parseable: nothing half-written there
    assert "Traceback" not in res.output and "unexpected" not in res.output, res.output
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# --------------------------------------------------------------------------- the command set

def test_the_command_set_is_the_documented_one():
    assert sorted(COMMANDS) == ALL
    # each module registers exactly its commands (a module deleted or emptied is noticed here)
    for module, paths in EXPECTED.items():
        assert module in _COMMAND_MODULES, module
        got = {p for p, c in COMMANDS.items() if c.callback.__module__ == f"adaptreg.cli.{module}"}
        assert got == paths, module
    # and every command module on disk is wired into the group
    on_disk = {f.stem for f in CLI_DIR.glob("*.py") if not f.stem.startswith("_")}
    assert on_disk == set(_COMMAND_MODULES) == set(EXPECTED)


def test_no_json_exceptions_are_real():
    for path in NO_JSON:
        assert path in COMMANDS and not any(p.name == "as_json" for p in COMMANDS[path].params), path


# --------------------------------------------------------------------------- --json everywhere

@pytest.mark.parametrize("path", [p for p in ALL if p not in NO_JSON])
def test_every_reporting_command_takes_json(path):
    cmd = COMMANDS[path]
    opt = next((p for p in cmd.params if isinstance(p, click.Option) and "--json" in p.opts), None)
    assert opt is not None and opt.is_flag and opt.name == "as_json", f"{path} has no --json flag"
    with cmd.make_context(path, minimal_args(cmd) + ["--json"]) as ctx:  # parses, does not run
        assert ctx.params["as_json"] is True


@pytest.mark.parametrize("path", ALL)
def test_help_renders(path):
    res = CliRunner().invoke(main, path.split() + ["--help"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("Usage: ") and f" {path} [OPTIONS]" in res.stdout.splitlines()[0], res.stdout
    assert ("--json" in res.stdout) is (path not in NO_JSON)


# --------------------------------------------------------------------------- bad input: exit 2, one line

@pytest.mark.parametrize("path", ALL)
def test_unknown_option_exits_2_with_one_line(path, bodies_refused):
    cmd = COMMANDS[path]
    res = CliRunner().invoke(main, path.split() + minimal_args(cmd) + json_flag(path) + ["--no-such-option"])
    one_error_line(res, "--no-such-option")


def invalid_value(p: click.Parameter, tmp: Path) -> str | None:
    """A value the option's click type refuses, or None for untyped (string) options and flags."""
    t = p.type
    if isinstance(p, click.Option) and p.is_flag:
        return None
    if isinstance(t, click.Choice):
        return "no-such-choice"
    if isinstance(t, (click.IntRange, click.FloatRange)):
        if t.min is not None:
            return str(t.min) if t.min_open else str(t.min - 1)
        return str(t.max + 1)
    if isinstance(t, click.types.IntParamType):
        return "1.5x"
    if isinstance(t, click.types.FloatParamType):
        return "not-a-number"
    if isinstance(t, click.Path):
        if t.exists:
            return str(tmp / "does-not-exist")
        if not t.dir_okay:
            return str(tmp)  # an existing directory where a file is expected
    return None


def typed_options() -> list[tuple[str, str]]:
    return [(path, p.opts[0]) for path in ALL for p in COMMANDS[path].params
            if isinstance(p, click.Option) and invalid_value(p, Path("/")) is not None]


TYPED = typed_options()


def test_typed_options_are_found():
    # the commands whose options are all strings or flags, so only the unknown-option test applies
    untyped = {path for path in ALL} - {path for path, _ in TYPED}
    assert untyped == {"data list", "list", "show", "lookup", "promote", "archive", "diff", "export", "route show"}


@pytest.mark.parametrize("path,option", TYPED, ids=[f"{p}:{o}" for p, o in TYPED])
def test_invalid_typed_value_exits_2_with_one_line(path, option, tmp_path, bodies_refused):
    cmd = COMMANDS[path]
    param = next(p for p in cmd.params if isinstance(p, click.Option) and p.opts[0] == option)
    bad = invalid_value(param, tmp_path)
    res = CliRunner().invoke(main, path.split() + minimal_args(cmd) + json_flag(path) + [option, bad])
    line = one_error_line(res, option)
    assert "Invalid value" in line, line


def test_invalid_value_generator_really_is_invalid():
    """Each generated value fails the type's own conversion (the test above cannot pass vacuously)."""
    for path, option in TYPED:
        param = next(p for p in COMMANDS[path].params if isinstance(p, click.Option) and p.opts[0] == option)
        bad = invalid_value(param, Path(__file__).parent)
        with pytest.raises(click.BadParameter):
            param.type.convert(bad, param, None)


def test_merge_checks_the_new_task_name_before_opening_anything(tmp_path):
    """'+' is not legal in a task name: refused before the registry is opened or a base loaded
    (it used to be checked only inside merge_adapters, after the base was loaded)."""
    res = CliRunner().invoke(main, ["merge", "news", "spam", "--name", "news+spam", "--json",
                                    "--registry", str(tmp_path / "registry")])
    line = one_error_line(res, "task name 'news+spam' is invalid")
    assert line.startswith("error: ")
    assert not (tmp_path / "registry").exists()


# --------------------------------------------------------------------------- folders --out, files --output

FOLDER_OUT = {"onboard": ["onboard", "t", "--data", "x.csv"], "merge": ["merge", "a", "b", "--name", "m"]}


@pytest.mark.parametrize("path", sorted(FOLDER_OUT))
def test_folder_option_is_out_and_output_is_hidden(path):
    res = CliRunner().invoke(main, [path, "--help"])
    assert "--out DIR" in res.stdout and "--output" not in res.stdout, res.stdout
    opts = {o: p for p in COMMANDS[path].params for o in p.opts}
    assert opts["--output"].hidden and not opts["--out"].hidden


@pytest.mark.parametrize("path", sorted(FOLDER_OUT))
def test_out_and_deprecated_output_together_exit_2(path, tmp_path):
    res = CliRunner().invoke(main, FOLDER_OUT[path] + ["--out", str(tmp_path / "a"), "--output", str(tmp_path / "b"),
                                                       "--registry", str(tmp_path / "reg"), "--json"])
    one_error_line(res, "--out ", "--output ", "both given")
    assert not any(tmp_path.iterdir())  # nothing opened or written


def test_deprecated_output_warns_then_acts_as_out(tmp_path):
    """merge --output DIR: the deprecation line, then the folder is checked exactly as --out's
    (a path under a plain file is refused naming --out), before the registry is opened."""
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, ["merge", "a", "b", "--name", "m", "--output", str(blocker / "m"),
                                    "--registry", str(tmp_path / "reg")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 2, res.stderr
    assert lines[0] == ("warning: --output is deprecated for a folder; use --out DIR "
                        "(--output will be removed in the next release)")
    assert lines[1].startswith(f"error: --out {blocker / 'm'}: ") and "not a directory" in lines[1], lines[1]
    assert not (tmp_path / "reg").exists()
