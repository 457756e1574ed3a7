"""``adaptreg predict``, ``merge``, ``export`` and ``route``: serve, combine and route task adapters."""

from __future__ import annotations

from typing import Any

import click

from ._common import (check_threshold, comma_list, emit, json_option, log, out_dir_options, registry_option,
                      resolve_out_dir, table)

_base_option = click.option("--base", default=None, metavar="SPEC",
                            help="Base model ('minilm', a directory or a hub id). Default: the base the adapters were built on.")


def _registry(location: str | None) -> Any:
    from ..registry import Registry

    return Registry(location)


def _base_for(reg: Any, tasks: list[str], spec: str | None, fast: bool = False) -> Any:
    """The base named by ``--base`` or recorded by the first of ``tasks``; ``fast``: prediction only
    (:func:`adaptreg.base.load_base`)."""
    from ..base import load_base
    from ..errors import NotFoundError

    if spec:
        return load_base(spec, fast=fast)
    for t in tasks:
        rec = reg.lookup(t)
        base_id = (rec.get("base") or {}).get("id")
        if base_id:
            return load_base(base_id, fast=fast)
    raise NotFoundError("cannot tell which base to load: pass --base")


def _parse_weights(value: str, n_tasks: int) -> list[float]:
    """``--weights W1,W2,...``: one finite number per task."""
    import math

    from ..errors import ConfigError

    parts = [p.strip() for p in value.split(",")]
    weights = []
    for p in parts:
        try:
            w = float(p)
        except ValueError:
            raise ConfigError(f"--weights {value}: {p!r} is not a number; give one number per task, "
                              f"e.g. --weights {','.join(['0.5'] * max(n_tasks, 2))}") from None
        if not math.isfinite(w):
            raise ConfigError(f"--weights {value}: {p} is not finite; give finite numbers such as 0.5")
        weights.append(w)
    if len(weights) != n_tasks:
        raise ConfigError(f"--weights {value}: {len(weights)} weights for {n_tasks} tasks; give one weight per task")
    return weights


# --------------------------------------------------------------------------- predict

@click.command()
@click.option("--data", "data_path", default=None, metavar="PATH", help="CSV or JSONL file with one text per row.")
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A text to classify (repeatable).")
@click.option("--text-col", default="text", show_default=True, help="Column holding the text (with --data).")
@click.option("--id-col", default=None, metavar="COL", help="Column copied to the output to identify each row.")
@click.option("--task", default=None, help="Use this task's adapter for every row (no routing).")
@click.option("--tasks", "task_list", default=None, metavar="T1,T2", help="Only load these tasks (default: every task).")
@click.option("--alias", default="production", show_default=True, help="Adapter version per task: this alias if set, else the latest.")
@click.option("--threshold", type=float, default=None, help="Router abstention threshold (route_score above it -> unknown; default 1.0).")
@click.option("--no-router", is_flag=True, help="Do not load the registered router (then --task is needed with several tasks).")
@click.option("--stack", "stack", multiple=True, metavar="TASK[:WEIGHT]",
              help="With --task: also apply this task's adapter, added to --task's (repeatable; weight scales it, default 1).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--bf16", is_flag=True, help="Run the layers under bf16 autocast: about 2x faster on CPUs with AVX-512 "
              "bf16 or AMX, labels agreeing with float32 on the validation rows measured (docs/benchmarks.md).")
@click.option("--output", default=None, metavar="FILE.csv|FILE.jsonl", help="Write predictions to a file instead of stdout.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output file.")
@_base_option
@registry_option
@json_option
def predict(data_path: str | None, texts: tuple[str, ...], text_col: str, id_col: str | None, task: str | None,
            task_list: str | None, alias: str, threshold: float | None, no_router: bool, stack: tuple[str, ...],
            batch_size: int, bf16: bool, output: str | None, overwrite: bool, base: str | None, registry: str | None,
            as_json: bool) -> None:
    """Classify texts with the registered task adapters, routing each text to its task.

    One output row per input row, in input order, with the id column carried through. Rows the
    router does not recognise get task and label 'unknown'.

    \b
    Examples:
      adaptreg predict --text "The striker scored twice" --text "Shares fell 3%"
      adaptreg predict --data inbox.csv --text-col body --id-col id --output predictions.csv
      adaptreg predict --data reviews.jsonl --task sentiment --json
      adaptreg predict --data reviews.jsonl --task sentiment --stack movies-domain:0.5
    """
    from ..errors import ConfigError, DataError

    if bool(data_path) == bool(texts):
        raise ConfigError("give either --data PATH or one or more --text, not both or neither")
    if stack and not task:
        raise ConfigError("--stack adds adapters to one task's adapter: give --task T as well")
    if stack and bf16:
        raise ConfigError("--bf16 runs the routed/single-task path, not --stack: drop one of them")
    check_threshold(threshold)
    if output:
        from .._util import check_output_file

        check_output_file(output, "--output", overwrite=overwrite, inputs={"--data": data_path})
        if _output_kind(output) is None:
            raise ConfigError(f"--output {output}: use a .csv or .jsonl file name")
    rows: list[dict[str, Any]]
    if data_path:
        from ..compose.predict import read_table

        rows, cols = read_table(data_path)
        for col in (text_col, id_col):
            if col is not None and col not in cols:
                raise DataError(f"{data_path}: no column {col!r} (columns: {', '.join(cols) or 'none'}); "
                                f"pass --{'text' if col == text_col else 'id'}-col")
        inputs = ["" if r.get(text_col) is None else str(r.get(text_col)) for r in rows]
    else:
        if id_col:
            raise ConfigError("--id-col needs --data")
        rows, inputs = [{} for _ in texts], list(texts)
    from ..compose.predict import Predictor

    reg = _registry(registry)
    if stack:
        out = _predict_stacked(reg, task, stack, alias, base, inputs, rows, id_col, batch_size)
        _deliver(out, ([id_col] if id_col else []) + ["task", "label", "confidence", "text"], output, as_json)
        return
    names = comma_list(task_list, "task") or ([task] if task else None)
    if names is None:
        from ..compose.predict import task_names

        names = task_names(reg)
        if not names:
            from ..errors import NotFoundError

            raise NotFoundError(f"no tasks in the registry at {reg.location.display}: onboard one with `adaptreg onboard`")
    lb = _base_for(reg, names, base, fast=True)
    log(f"loading {len(names)} adapter(s) on base {lb.id}")
    pred = Predictor(reg, base=lb, tasks=names, alias=alias, router=False if (no_router or task) else None,
                     threshold=threshold, bf16=bf16)
    if task is None and pred.router is None and len(pred.tasks) > 1:
        raise ConfigError("no router is registered: pass --task T, or build one with `adaptreg route add TASK...`")
    results = pred.predict(inputs, task=task, batch_size=batch_size) if inputs else []
    out = []
    for src, res in zip(rows, results):
        row = {id_col: src.get(id_col)} if id_col else {}
        row.update(res)
        out.append(row)
    t = pred.last_timing_
    if t.get("n"):
        log(f"{t['n']} rows in {t['total_s']:.2f} s (routing {t['route_s']:.2f} s, adapters {t['adapter_s']:.2f} s); "
            f"{sum(r['task'] == 'unknown' for r in out)} unknown")
    _deliver(out, ([id_col] if id_col else []) + ["task", "label", "confidence", "route_score", "text"], output, as_json)


def _deliver(out: list[dict[str, Any]], cols: list[str], output: str | None, as_json: bool) -> None:
    """Predictions to ``output`` (CSV/JSONL) if given, else to stdout (table, or JSON with --json)."""
    if output:
        _write_predictions(out, output)
        log(f"wrote {len(out)} predictions to {output}")
        return
    emit(out, as_json, lambda rs: table([{**r, "text": r["text"][:60]} for r in rs], cols))


def _predict_stacked(reg: Any, task: str, stack: tuple[str, ...], alias: str, base: str | None, inputs: list[str],
                     rows: list[dict[str, Any]], id_col: str | None, batch_size: int) -> list[dict[str, Any]]:
    """``task``'s adapter and head with the ``stack`` adapters added (additive composition)."""
    from ..compose.predict import resolve_adapter
    from ..compose.router import UNKNOWN
    from ..compose.stack import StackedModel
    from ..errors import ConfigError

    weights: dict[str, float] = {}
    for item in stack:
        name, _, w = item.partition(":")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise ConfigError(f"--stack {item}: the weight after ':' must be a number, e.g. {name}:0.5") from None
    if task in weights:
        raise ConfigError(f"--stack {task}: that is --task's own adapter, already applied")
    lb = _base_for(reg, [task, *weights], base)
    paths = {t: resolve_adapter(reg, t, alias, lb)["path"] for t in [task, *weights]}
    log(f"stacking {', '.join(f'{t} x{w:g}' for t, w in weights.items())} on {task}")
    model = StackedModel(lb, paths, head=task, weights=weights)
    filled = [i for i, text in enumerate(inputs) if text.strip()]  # an empty text has no label: 'unknown'
    labels, confs = model.predict([inputs[i] for i in filled], batch_size) if filled else ([], [])
    answers = {i: (lab, conf) for i, lab, conf in zip(filled, labels, confs)}
    out = []
    for i, (src, text) in enumerate(zip(rows, inputs)):
        lab, conf = answers.get(i, (UNKNOWN, None))
        row = {id_col: src.get(id_col)} if id_col else {}
        row.update({"text": text, "task": task if i in answers else UNKNOWN, "label": lab, "confidence": conf,
                    "stack": ",".join(f"{t}:{w:g}" for t, w in weights.items())})
        out.append(row)
    return out


def _output_kind(path: str) -> str | None:
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    return "csv" if suffix == ".csv" else "jsonl" if suffix in (".jsonl", ".ndjson") else None


def _write_predictions(rows: list[dict[str, Any]], path: str) -> None:
    """Write all rows to a temporary file, then rename: ``path`` is never half-written."""
    import csv

    from .._util import atomic_file, to_json
    from ..errors import ConfigError

    kind = _output_kind(path)
    if kind == "csv":
        cols = list(rows[0]) if rows else ["text", "task", "label", "confidence", "route_score"]
        with atomic_file(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    elif kind == "jsonl":
        with atomic_file(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(to_json(r, indent=None, sort_keys=False, ensure_ascii=False) + "\n")
    else:
        raise ConfigError(f"--output {path}: use a .csv or .jsonl file name")


# --------------------------------------------------------------------------- merge

@click.command()
@click.argument("tasks", nargs=-1, required=True, metavar="TASK[@VERSION]...")
@click.option("--name", required=True, help="Task name of the merged adapter in the registry.")
@click.option("--method", type=click.Choice(["linear", "ties", "dare_ties", "dare_linear", "svd", "cat"]),
              default="ties", show_default=True, help="PEFT add_weighted_adapter combination.")
@click.option("--weights", default=None, metavar="W1,W2", help="One weight per task (default 1.0 each for ties/dare_ties, 1/n otherwise).")
@click.option("--density", type=float, default=0.5, show_default=True, help="Fraction of weights kept (ties, dare_*).")
@click.option("--svd-rank", type=click.IntRange(1), default=None, help="Rank of an svd merge (default: the largest source rank).")
@out_dir_options("Also write the merged artifact to the folder DIR.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--no-register", is_flag=True, help="Do not register the result (needs --out).")
@click.option("--no-eval", is_flag=True, help="Skip evaluating retention on the source tasks' test sets.")
@click.option("--tune", is_flag=True, help="Choose a weight scale (x0.5-x2) and, for ties/dare, the density on the "
              "sources' validation splits (best worst-task retention); test splits are only used to report.")
@_base_option
@registry_option
@json_option
def merge(tasks: tuple[str, ...], name: str, method: str, weights: str | None, density: float, svd_rank: int | None,
          out: str | None, legacy_output: str | None, overwrite: bool, no_register: bool, no_eval: bool, tune: bool,
          base: str | None, registry: str | None, as_json: bool) -> None:
    """Merge task adapters into one adapter NAME that keeps every task's head; report retention.

    Retention = merged accuracy / source accuracy on each source task's test split. The result is
    registered as a version of NAME with the sources recorded as its parents.

    \b
    Examples:
      adaptreg merge news sentiment --name news-sentiment --method ties --density 0.5
      adaptreg merge news@2 sentiment --name combo --method linear --weights 0.7,0.3 --json
      adaptreg merge news sentiment --name combo --method ties --tune
      adaptreg merge news sentiment --name combo --out merged/combo --no-register --json
    """
    from ..compose.merge import merge_adapters, parse_sources
    from ..errors import ConfigError

    # every option is checked before the registry or a model is opened
    from ..artifact import validate_task_name

    validate_task_name(name)
    names = [t for t, _ in parse_sources(tasks)]
    w = _parse_weights(weights, len(tasks)) if weights is not None else None
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"--density {density}: must be in (0, 1]")
    output = resolve_out_dir(out, legacy_output, register=not no_register, overwrite=overwrite)

    reg = _registry(registry)
    lb = _base_for(reg, names, base)
    log(f"merging {', '.join(tasks)} with {method}")
    res = merge_adapters(list(tasks), name=name, method=method, weights=w, density=density, svd_rank=svd_rank,
                         base=lb, registry=reg, register=not no_register, output=output, overwrite=overwrite,
                         evaluate=not no_eval, tune=tune)
    emit(res.summary(), as_json, _merge_human)


def _merge_human(s: dict[str, Any]) -> str:
    lines = [f"merged     {s['name']}" + (f" (version {s['version']})" if s.get("version") else ""),
             f"artifact   {s['artifact_dir']}",
             f"method     {s['merge']['method']}  weights {s['merge']['weights']}  density {s['merge']['density']}"
             + ("  (tuned on validation)" if s["merge"].get("tuning") else ""),
             "parents    " + ", ".join(f"{p['task']}@{p['version']}" for p in s["parents"])]
    rows = [{"task": t, **r} for t, r in s["retention"].items()]
    if rows:
        lines += ["", table(rows, ["task", "source_accuracy", "merged_accuracy", "retention", "n_test"])]
    return "\n".join(lines)


# --------------------------------------------------------------------------- export

@click.command()
@click.argument("task")
@click.option("--merged", "output", required=True, metavar="OUT_DIR", help="Directory for the standalone model.")
@click.option("--version", "version", default=None, help="Version to export (default: alias production, else latest).")
@click.option("--alias", default=None, help="Alias of the version to export.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT_DIR.")
@_base_option
@registry_option
@json_option
def export(task: str, output: str, version: str | None, alias: str | None, overwrite: bool, base: str | None,
           registry: str | None, as_json: bool) -> None:
    """Merge TASK's adapter into the base weights: a plain transformers model dir + head + labels.

    Load it with AutoModel.from_pretrained(OUT_DIR); logits = mean-pooled last hidden state
    times head.safetensors. No adapter code and no adapter overhead at inference.

    \b
    Examples:
      adaptreg export news --merged exports/news
      adaptreg export news --version 3 --merged exports/news-v3 --overwrite --json
    """
    from .._util import check_output_dir

    check_output_dir(output, "--merged", overwrite=overwrite)
    from ..compose.merge import export_merged

    reg = _registry(registry)
    lb = _base_for(reg, [task], base)
    rec = reg.load(task, version=version, alias=alias, base=lb)
    path = export_merged(rec["path"], output, base=lb, overwrite=overwrite)
    emit({"task": task, "version": rec["version"], "output": str(path)}, as_json,
         lambda d: f"exported {d['task']} version {d['version']} to {d['output']}")


# --------------------------------------------------------------------------- route

@click.group()
def route() -> None:
    """Build, inspect and evaluate the task router (versioned in the registry as adaptreg-router)."""


@route.command("add")
@click.argument("tasks", nargs=-1, required=True)
@click.option("--rebuild", is_flag=True, help="Start a new router instead of extending the latest one.")
@click.option("--max-length", type=click.IntRange(8), default=64, show_default=True,
              help="Token length of routing features (only for a new router).")
@click.option("--threshold", type=float, default=None, help="Abstention threshold stored in the router (default 1.0).")
@_base_option
@registry_option
@json_option
def route_add(tasks: tuple[str, ...], rebuild: bool, max_length: int, threshold: float | None, base: str | None,
              registry: str | None, as_json: bool) -> None:
    """Add TASKS (their training splits, rebuilt from each manifest's data source) to the router.

    Each added task creates a new router version. Only compact statistics are kept.

    \b
    Examples:
      adaptreg route add news sentiment
      adaptreg route add news --rebuild --max-length 128
    """
    check_threshold(threshold)
    from ..compose.router import Router
    from ..compose.routing import add_task_to_registry_router

    reg = _registry(registry)
    lb = _base_for(reg, list(tasks), base)
    fresh = Router(threshold=threshold, max_length=max_length) if rebuild else None
    recs = []
    for t in tasks:
        # each task extends the latest router read under the lock (the fresh one first with --rebuild)
        _, rec = add_task_to_registry_router(reg, t, lb, new_router=fresh, threshold=threshold)
        fresh = None
        log(f"added {t!r}: router version {rec['version']} routes {', '.join(rec['tasks'])}")
        recs.append(rec)
    emit(recs[-1], as_json, lambda r: f"router version {r['version']}: {', '.join(r['tasks'])}")


@route.command("eval")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option("--ood", "ood_files", multiple=True, metavar="FILE", help="CSV/JSONL of out-of-distribution texts (column 'text'): abstention rate.")
@click.option("--threshold", type=float, default=None, help="Threshold to evaluate at (default: the router's).")
@click.option("--version", type=int, default=None, help="Router version (default: latest).")
@_base_option
@registry_option
@json_option
def route_eval(split: str, ood_files: tuple[str, ...], threshold: float | None, version: int | None, base: str | None,
               registry: str | None, as_json: bool) -> None:
    """Routing accuracy on every routed task's held-out split (abstentions count as errors).

    \b
    Examples:
      adaptreg route eval
      adaptreg route eval --ood digits.csv --threshold 1.5 --json
    """
    check_threshold(threshold)
    from ..compose.predict import read_table
    from ..compose.routing import load_router, task_features
    from ..compose.router import abstention_rate, routing_report, served_entries, split_entry
    from ..errors import NotFoundError

    reg = _registry(registry)
    router = load_router(reg, version)
    if router is None:
        raise NotFoundError("no router registered: build one with `adaptreg route add TASK...`")
    served = served_entries(router, {t["task"]: t["served"] for t in _served_versions(reg)})
    if not served:
        raise NotFoundError(f"router version {router.registry_version_} routes none of the versions the registry "
                            "serves; add them with `adaptreg route add TASK...`")
    lb = _base_for(reg, sorted(set(served.values())), base)
    feats = {t: task_features(reg, t, lb, router, split, version=split_entry(e)[1])[0] for e, t in served.items()}
    report = routing_report(router, feats, threshold, entries=served)
    report["version"] = getattr(router, "registry_version_", None)
    report["split"] = split
    if ood_files:
        report["ood"] = {}
        for f in ood_files:
            rows, _ = read_table(f)
            texts = [str(r.get("text", "")) for r in rows]
            report["ood"][f] = {"n": len(texts), "abstained": abstention_rate(
                router, router.features(lb, texts), threshold, entries=served)}
    emit(report, as_json, _route_human)


def _served_versions(reg: Any) -> list[dict[str, Any]]:
    """Each task and the version its default lookup serves (alias production, else the latest ready)."""
    out = []
    for row in reg.list_tasks():
        out.append({"task": row["task"], "served": row["aliases"].get("production", row["latest"])})
    return out


def _route_human(r: dict[str, Any]) -> str:
    rows = [{"task": t, **v, "confused_with": ",".join(f"{k}:{n}" for k, n in v["confused_with"].items()) or None}
            for t, v in r["per_task"].items()]
    lines = [f"router version {r.get('version')}  threshold {r['threshold']}  {r['split']} split",
             table(rows, ["task", "n", "accuracy", "abstained", "confused_with"]),
             f"overall accuracy {r['accuracy']:.4f}  abstained {r['abstained']:.4f}  (n={r['n']})"]
    for f, v in (r.get("ood") or {}).items():
        lines.append(f"OOD {f}: {v['abstained']:.4f} abstained (n={v['n']})")
    return "\n".join(lines)


@route.command("show")
@registry_option
@json_option
def route_show(registry: str | None, as_json: bool) -> None:
    """List router versions (newest first) and the tasks each routes to."""
    from ..compose.routing import router_versions

    rows = router_versions(_registry(registry))
    emit(rows, as_json, lambda rs: table([{**r, "tasks": ",".join(r["tasks"])} for r in rs], ["version", "tasks", "run_id"]))


def register(group: click.Group) -> None:
    for cmd in (predict, merge, export, route):
        group.add_command(cmd)
