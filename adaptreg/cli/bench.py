"""``adaptreg benchmark continual`` and ``adaptreg demo``: strategies side by side on a task sequence."""

from __future__ import annotations

from typing import Any

import click

from ._common import emit, json_option, log, registry_option

STRATEGIES = ("adaptreg", "oracle", "merged", "seq-lora", "joint", "probe")  # = adaptreg.continual.benchmark.STRATEGIES

# The demo trains at the onboarding defaults (epochs and length from each task's size): None = default.
DEMO = {"tasks": "bbc-news,spam,movie-reviews,tweet-sentiment", "max_per_class": 50, "test_per_class": None, "epochs": None,
        "max_length": None, "out": "demo-report"}


def _run(tasks: str, order: str | None, strategies: str, base: str, max_per_class: int | None, test_per_class: int | None,
         epochs: int | None,
         max_length: int | None, batch_size: int, lr: float | None, rank: int, seed: int, image_size: int, joint_every_step: bool,
         out: str | None, registry: str | None, no_mlflow: bool, quiet: bool, as_json: bool) -> None:
    from ..config import LoraSettings, TrainSettings
    from ..continual.benchmark import parse_strategies, run_continual
    from ..continual.report import summary_table
    from ..errors import ConfigError

    specs = [t.strip() for t in tasks.split(",") if t.strip()]
    if order:
        idx = [int(i) for i in order.split(",")] if all(p.strip().isdigit() for p in order.split(",")) else None
        if idx is not None:
            if sorted(idx) != list(range(len(specs))):
                raise ConfigError(f"--order {order}: give a permutation of 0..{len(specs) - 1}")
            specs = [specs[i] for i in idx]
        else:
            names = [o.strip() for o in order.split(",")]
            if sorted(names) != sorted(specs):
                raise ConfigError(f"--order {order}: name each of --tasks once ({', '.join(specs)})")
            specs = names
    if out:
        from .._util import check_output_dir

        check_output_dir(out, "--out", overwrite=None)  # the report folder is written into; checked before any training
    lora = LoraSettings(rank=rank, alpha=2.0 * rank)
    given = {"epochs": epochs, "max_length": max_length, "lr": lr}
    train = TrainSettings(batch_size=batch_size, seed=seed, **{k: v for k, v in given.items() if v is not None})
    result = run_continual(specs, strategies=parse_strategies(strategies), base=base, lora=lora, train=train,
                           max_per_class=max_per_class, test_per_class=test_per_class, out=out, registry=registry, mlflow=not no_mlflow,
                           joint_every_step=joint_every_step, image_size=image_size,
                           progress=None if quiet else log)
    data = result.to_dict()
    if as_json:
        emit({"tasks": data["tasks"], "scenario": data["scenario"], "summary": result.summary_rows(),
              "R": data["R"], "probe_baseline": data["probe_baseline"], "report": out,
              "mlflow_run_id": data["extra"].get("mlflow_run_id")}, True)
    else:
        click.echo(summary_table(data, markdown=False))
        if out:
            log(f"report: {out}/report.md")


def _common_options(f: Any) -> Any:
    opts = [
        click.option("--order", default=None, metavar="I,J,..|NAMES", help="Onboarding order: a permutation of --tasks "
                     "(indices or names). Default: as listed."),
        click.option("--strategies", default=",".join(STRATEGIES), show_default=True,
                     help="Comma-separated subset of: " + ", ".join(STRATEGIES) + "."),
        click.option("--base", default="minilm", show_default=True, help="Text base: 'minilm', a directory or a hub id."),
        click.option("--epochs", type=int, default=None, help="Epochs per training (every strategy); default: onboarding's "
                     "rule (from each task's size)."),
        click.option("--max-length", type=int, default=None, help="Tokens per text; default: onboarding's rule (each task's "
                     "own length)."),
        click.option("--batch-size", type=int, default=16, show_default=True, help="Examples per step."),
        click.option("--lr", type=float, default=None, help="AdamW learning rate; default: onboarding's."),
        click.option("--rank", type=int, default=8, show_default=True, help="LoRA rank (alpha = 2 x rank)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits, init and shuffling."),
        click.option("--image-size", type=int, default=64, show_default=True, help="Image side in pixels (image scenarios)."),
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
@click.option("--out", default="continual-report", show_default=True, metavar="DIR",
              help="Report folder: report.md, results.json, PNG plots, adapters/.")
@_common_options
def continual(tasks: str, max_per_class: int | None, test_per_class: int | None, out: str, **kw: Any) -> None:
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
    _run(tasks, kw.pop("order"), kw.pop("strategies"), kw.pop("base"), max_per_class, test_per_class, out=out, **kw)


@click.command("demo")
@click.option("--out", default=DEMO["out"], show_default=True, metavar="DIR", help="Report folder.")
@click.option("--max-per-class", type=int, default=DEMO["max_per_class"], show_default=True,
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
    _run(DEMO["tasks"], None, ",".join(STRATEGIES), "minilm", max_per_class, DEMO["test_per_class"], DEMO["epochs"], DEMO["max_length"], 16,
         None, 8, 0, 64, False, out, registry, no_mlflow, False, as_json)


def register(group: click.Group) -> None:
    existing = group.commands.get("benchmark")
    if isinstance(existing, click.Group):
        existing.add_command(continual)
    else:
        group.add_command(benchmark)
    group.add_command(demo)
