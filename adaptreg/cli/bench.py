"""``adaptreg benchmark continual`` and ``adaptreg demo``: strategies side by side on a task sequence."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ._common import emit, json_option, log, registry_option

STRATEGIES = ("adaptreg", "oracle", "merged", "seq-lora", "replay", "o-lora", "joint", "probe")  # = adaptreg.continual.benchmark.STRATEGIES
DEMO_STRATEGIES = ("adaptreg", "oracle", "merged", "seq-lora", "joint", "probe")

@dataclasses.dataclass
class BenchRun:
    """One `benchmark continual` run as the command line describes it. The click options read
    their defaults from here and `demo` fills in only what differs, so no default is written twice.
    None = onboarding's default (epochs and token length from each task's size, its learning rate)."""

    tasks: str
    order: str | None = None
    strategies: str = ",".join(STRATEGIES)
    base: str = "minilm"
    max_per_class: int | None = None
    test_per_class: int | None = None
    max_per_task: int | None = None
    replay_buffer: int = 200
    olora_lambda: float = 0.5
    epochs: int | None = None
    max_length: int | None = None
    batch_size: int = 16
    lr: float | None = None
    rank: int = 8
    seed: int = 0
    image_size: int = 64
    joint_every_step: bool = False
    out: str | None = "continual-report"
    registry: str | None = None
    no_mlflow: bool = False
    quiet: bool = False


_D = {f.name: f.default for f in dataclasses.fields(BenchRun)}
DEMO_TASKS = "bbc-news,spam,movie-reviews,tweet-sentiment"
DEMO_MAX_PER_CLASS = 50
DEMO_OUT = "demo-report"


def _specs(tasks: str, order: str | None) -> list[str]:
    from ..errors import ConfigError

    specs = [t.strip() for t in tasks.split(",") if t.strip()]
    if not order:
        return specs
    if all(p.strip().isdigit() for p in order.split(",")):
        idx = [int(i) for i in order.split(",")]
        if sorted(idx) != list(range(len(specs))):
            raise ConfigError(f"--order {order}: give a permutation of 0..{len(specs) - 1}")
        return [specs[i] for i in idx]
    names = [o.strip() for o in order.split(",")]
    if sorted(names) != sorted(specs):
        raise ConfigError(f"--order {order}: name each of --tasks once ({', '.join(specs)})")
    return names


def _run(run: BenchRun, as_json: bool) -> None:
    from ..config import LoraSettings, TrainSettings
    from ..continual.benchmark import parse_strategies, run_continual
    from ..continual.report import summary_table

    specs = _specs(run.tasks, run.order)
    if run.out:
        from .._util import check_output_dir

        check_output_dir(run.out, "--out", overwrite=None)  # the report folder is written into; checked before any training
    lora = LoraSettings(rank=run.rank, alpha=2.0 * run.rank)
    given = {"epochs": run.epochs, "max_length": run.max_length, "lr": run.lr}
    train = TrainSettings(batch_size=run.batch_size, seed=run.seed, **{k: v for k, v in given.items() if v is not None})
    result = run_continual(specs, strategies=parse_strategies(run.strategies), base=run.base, lora=lora, train=train,
                           max_per_class=run.max_per_class, test_per_class=run.test_per_class,
                           max_per_task=run.max_per_task, replay_buffer=run.replay_buffer, olora_lambda=run.olora_lambda,
                           out=run.out,
                           registry=run.registry, mlflow=not run.no_mlflow, joint_every_step=run.joint_every_step,
                           image_size=run.image_size, progress=None if run.quiet else log)
    data = result.to_dict()
    if as_json:
        emit({"tasks": data["tasks"], "scenario": data["scenario"], "summary": result.summary_rows(),
              "R": data["R"], "probe_baseline": data["probe_baseline"], "report": run.out,
              "mlflow_run_id": data["extra"].get("mlflow_run_id")}, True)
    else:
        click.echo(summary_table(data, markdown=False))
        if run.out:
            log(f"report: {run.out}/report.md")


def _common_options(f: Any) -> Any:
    opts = [
        click.option("--order", default=None, metavar="I,J,..|NAMES", help="Onboarding order: a permutation of --tasks "
                     "(indices or names). Default: as listed."),
        click.option("--strategies", default=_D["strategies"], show_default=True,
                     help="Comma-separated subset of: " + ", ".join(STRATEGIES) + "."),
        click.option("--base", default=_D["base"], show_default=True, help="Text base: 'minilm', a directory or a hub id."),
        click.option("--epochs", type=int, default=None, help="Epochs per training (every strategy); default: onboarding's "
                     "rule (from each task's size)."),
        click.option("--max-length", type=int, default=None, help="Tokens per text; default: onboarding's rule (each task's "
                     "own length)."),
        click.option("--batch-size", type=int, default=_D["batch_size"], show_default=True, help="Examples per step."),
        click.option("--lr", type=float, default=None, help="AdamW learning rate; default: onboarding's."),
        click.option("--rank", type=int, default=_D["rank"], show_default=True, help="LoRA rank (alpha = 2 x rank)."),
        click.option("--seed", type=int, default=_D["seed"], show_default=True, help="Seed for splits, init and shuffling."),
        click.option("--image-size", type=int, default=_D["image_size"], show_default=True, help="Image side in pixels (image scenarios)."),
        click.option("--replay-buffer", type=click.IntRange(min=0), default=_D["replay_buffer"], show_default=True,
                     help="'replay': training rows of earlier tasks kept in all (an equal share per task)."),
        click.option("--olora-lambda", type=click.FloatRange(min=0), default=_D["olora_lambda"], show_default=True,
                     help="'o-lora': weight of the orthogonality penalty between the new and old LoRA blocks."),
        click.option("--joint-every-step", is_flag=True, help="Train 'joint' after every step (full R; T(T+1)/2 trainings) "
                     "instead of once on all tasks (last row only)."),
        registry_option,
        click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow."),
        click.option("--quiet", "-q", is_flag=True, help="No progress on stderr."),
        json_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.group("benchmark")
def benchmark() -> None:
    """Benchmarks of onboarded adapters."""


@benchmark.command("continual")
@click.option("--tasks", required=True, metavar="T1,T2,..",
              help="Catalog names or CSV/JSONL files in onboarding order, or one image scenario: split-mnist, "
                   "split-fashion-mnist.")
@click.option("--max-per-class", type=int, default=None, help="Cap training examples per class (test capped alike).")
@click.option("--test-per-class", type=int, default=None,
              help="Catalog text tasks: test on up to N texts per class of the full test split instead.")
@click.option("--max-per-task", type=click.IntRange(min=2), default=None,
              help="Text tasks: cap each task's labelled rows (train + validation) at N, stratified by class, after "
                   "--max-per-class (keeps many-class tasks affordable).")
@click.option("--out", default=_D["out"], show_default=True, metavar="DIR",
              help="Report folder: report.md, results.json, PNG plots, adapters/.")
@_common_options
def continual(tasks: str, max_per_class: int | None, test_per_class: int | None, max_per_task: int | None, out: str,
              **kw: Any) -> None:
    """Onboard TASKS one after another and compare strategies on the accuracy matrix R.

    R[i][j] is the test accuracy on task j after onboarding task i. Prints ACC, BWT,
    forgetting, FWT (against the frozen-base probe) per strategy; writes a report folder and
    one MLflow parent run with a child run per strategy.

    \b
    Examples:
      adaptreg benchmark continual --tasks bbc-news,spam,movie-reviews,tweet-sentiment --max-per-class 100
      adaptreg benchmark continual --tasks a.csv,b.csv --strategies adaptreg,seq-lora --json
      adaptreg benchmark continual --tasks split-mnist --max-per-class 100 --epochs 2
    """
    as_json = kw.pop("as_json")
    _run(BenchRun(tasks=tasks, max_per_class=max_per_class, test_per_class=test_per_class, max_per_task=max_per_task,
                  out=out, **kw), as_json)


@click.command("demo")
@click.option("--out", default=DEMO_OUT, show_default=True, metavar="DIR", help="Report folder.")
@click.option("--max-per-class", type=int, default=DEMO_MAX_PER_CLASS, show_default=True,
              help="Training examples per class.")
@registry_option
@click.option("--no-mlflow", is_flag=True, help="Do not log to MLflow.")
@json_option
def demo(out: str, max_per_class: int, registry: str | None, no_mlflow: bool, as_json: bool) -> None:
    """Run the text continual benchmark at a size that takes about 10 minutes on 2 CPU cores.

    Four catalog tasks (bbc-news, spam, movie-reviews, tweet-sentiment; fetched on first use)
    on the MiniLM base, every strategy, then the summary table.

    \b
    Examples:
      adaptreg demo
      adaptreg demo --max-per-class 20 --no-mlflow
    """
    _run(BenchRun(tasks=DEMO_TASKS, strategies=",".join(DEMO_STRATEGIES), max_per_class=max_per_class, out=out,
                  registry=registry, no_mlflow=no_mlflow),
         as_json)


def register(group: click.Group) -> None:
    existing = group.commands.get("benchmark")
    if isinstance(existing, click.Group):
        existing.add_command(continual)
    else:
        group.add_command(benchmark)
    group.add_command(demo)
