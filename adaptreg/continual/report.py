"""Turn a :class:`~adaptreg.continual.benchmark.BenchmarkResult` into a report folder and MLflow runs.

Everything is written from the result's own numbers: ``results.json`` is the result itself,
``report.md``'s table is rendered from ``results.json``'s values (:func:`summary_table`), and
the plots read the same matrices.

Folder layout::

    results.json            R per strategy, metrics, probe baseline, settings, timings (sorted keys)
    report.md               summary table + R per strategy + settings
    R_<strategy>.png        heatmap of R
    acc_curve.png           ACC after each step, one line per strategy
    forgetting_curve.png    forgetting after each step, one line per strategy
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from .._util import dump_json

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["strategy", "acc", "bwt", "forgetting", "fwt", "probe_gain", "final_row", "seconds"]


def fmt_points(v: Any) -> str:
    if v is None:
        return "-"
    return f"{100 * v + 0.0:.2f}".replace("-0.00", "0.00")  # no "-0.00" from float noise


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the summary table from a results dict (``BenchmarkResult.to_dict()`` or results.json)."""
    rows = []
    for s in results["strategies"]:
        m = results["metrics"][s]
        rows.append({"strategy": s, "acc": m["acc"], "bwt": m["bwt"], "forgetting": m["forgetting"], "fwt": m["fwt"],
                     "probe_gain": m["probe_gain"], "final_row": m["final_row"],
                     "seconds": results.get("timings", {}).get(s)})
    return rows


def summary_table(results: dict[str, Any], markdown: bool = True) -> str:
    """The summary table (accuracies and transfers in points, i.e. percent)."""
    head = ["strategy", "ACC", "BWT", "forgetting", "FWT", "probe gain", "final R row", "seconds"]
    lines = []
    body = []
    for r in summary_rows(results):
        row = [r["strategy"], fmt_points(r["acc"]), fmt_points(r["bwt"]), fmt_points(r["forgetting"]), fmt_points(r["fwt"]),
               fmt_points(r["probe_gain"]), " ".join(fmt_points(v) for v in r["final_row"]),
               "-" if r["seconds"] is None else f"{r['seconds']:.0f}"]
        body.append(row)
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)


def matrix_table(R: list[list[float | None]], tasks: list[str]) -> str:
    head = ["after \\ on"] + tasks
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for i, row in enumerate(R):
        lines.append("| " + " | ".join([tasks[i]] + [fmt_points(v) for v in row]) + " |")
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    out = [f"# Continual benchmark ({results['scenario']})", "",
           f"Tasks in onboarding order: {', '.join(tasks)}.", "",
           "Accuracies in percent on each task's test split. ACC = mean of the last row of R; "
           "BWT = mean_j<T-1 (R[T-1][j] - R[j][j]); forgetting = mean_j<T-1 (max_l<T-1 R[l][j] - R[T-1][j]); "
           "FWT = mean_j>0 (R[j-1][j] - b_j) with b_j the frozen-base probe (undefined where R[j-1][j] is); "
           "probe gain = mean_j (R[j][j] - b_j). '-' = undefined. See docs/continual.md.", "",
           summary_table(results), ""]
    out += ["Frozen-base probe accuracy b_j: " + ", ".join(f"{t} {fmt_points(b)}" for t, b in zip(tasks, results["probe_baseline"])), ""]
    if results.get("extra", {}).get("routing_accuracy"):
        ra = results["extra"]["routing_accuracy"]
        out += ["Router accuracy on the test rows of the tasks seen so far, after each step: "
                + ", ".join(fmt_points(v) for v in ra), ""]
    steps = results.get("extra", {}).get("steps")
    if steps and steps.get("seconds"):
        out += ["## Cost per step", "", step_table(results), "",
                "Seconds: wall time of everything the strategy did for that task (training, then the evaluation "
                "of every task seen so far). `adaptreg` and `oracle` share the per-task adapters, so their "
                "training time is counted in both. Peak MiB: the process's peak resident memory during the step "
                + ("(reset before each step)." if steps.get("peak_is_per_step") else "(running peak: this platform cannot reset it)."),
                "", "![cost per step](steps.png)", ""]
    for s in results["strategies"]:
        out += [f"## {s}", ""]
        if results.get("notes", {}).get(s):
            out += [f"Note: {results['notes'][s]}", ""]
        out += [matrix_table(results["R"][s], tasks), "", f"![R {s}](R_{_slug(s)}.png)", ""]
    out += ["## Curves", "", "![ACC after each step](acc_curve.png)", "",
            "![forgetting after each step](forgetting_curve.png)", "", "## Settings", "", "```json"]
    from .._util import to_json

    out += [to_json(results.get("settings", {})), "```", ""]
    return "\n".join(out)


def step_table(results: dict[str, Any]) -> str:
    """Markdown: one row per step; per strategy its seconds and peak MiB; the router's accuracy."""
    steps = results["extra"]["steps"]
    names = [s for s in results["strategies"] if s in steps["seconds"]]
    routing = results.get("extra", {}).get("routing_accuracy") or []
    head = ["step", "task"] + (["router acc."] if routing else []) + [f"{s} s / MiB" for s in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(s: str, i: int) -> str:
        sec, mem = steps["seconds"][s][i], steps["peak_rss_mb"].get(s, [None] * (i + 1))[i]
        return "-" if sec is None else f"{sec:.0f} / {mem:.0f}" if mem is not None else f"{sec:.0f} / -"

    for i, t in enumerate(results["tasks"]):
        row = [str(i + 1), t] + ([fmt_points(routing[i]) if i < len(routing) else "-"] if routing else [])
        lines.append("| " + " | ".join(row + [cell(s, i) for s in names]) + " |")
    return "\n".join(lines)


def plot_steps(results: dict[str, Any], path: Path) -> None:
    """Seconds and peak memory per step, one line per strategy; the router's accuracy if measured."""
    from matplotlib.figure import Figure  # no pyplot: the application's backend is left alone

    steps = results["extra"]["steps"]
    tasks = results["tasks"]
    routing = results.get("extra", {}).get("routing_accuracy") or []
    panels = [("seconds", "seconds per step"), ("peak_rss_mb", "peak memory (MiB)")]
    fig = Figure(figsize=(max(6.0, 0.75 * len(tasks) + 2.5) * (len(panels) + bool(routing)) / 2, 3.8), dpi=100)
    axes = fig.subplots(1, len(panels) + bool(routing))
    for ax, (key, label) in zip(axes, panels):
        for s in results["strategies"]:
            ys = steps[key].get(s)
            _plot_steps(ax, ys or [], 1.0, markersize=3, label=s)
        ax.set_ylabel(label)
    if routing:
        ax = axes[-1]
        _plot_steps(ax, routing, 100.0, markersize=3, color="black")
        ax.set_ylabel("router accuracy (%)")
    for ax in axes:
        _task_axis(ax, tasks)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _plot_steps(ax: Any, values: list[float | None], scale: float, **style: Any) -> None:
    """One line over steps 1..T of ``scale`` x the defined values (undefined steps are skipped)."""
    pts = [(i + 1, scale * v) for i, v in enumerate(values) if v is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", **style)


def _task_axis(ax: Any, tasks: list[str]) -> None:
    """x axis = steps; names under the numbers, turned when many tasks would overlap."""
    many = len(tasks) > 6
    ax.set_xticks(range(1, len(tasks) + 1), [f"{i + 1} {t}" if many else f"{i + 1}\n{t}" for i, t in enumerate(tasks)],
                  fontsize=7, rotation=35 if many else 0, ha="right" if many else "center")
    ax.set_xlabel("after onboarding task")
    ax.grid(alpha=0.3)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def plot_heatmap(R: list[list[float | None]], tasks: list[str], path: Path, title: str) -> None:
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: the application's backend is left alone

    from .metrics import as_matrix

    A = as_matrix(R)
    n = len(tasks)
    fig = Figure(figsize=(2.0 + 0.9 * n, 1.6 + 0.7 * n), dpi=100)
    ax = fig.subplots()
    ax.imshow(np.ma.masked_invalid(A), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), tasks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(A.shape[0]), tasks[: A.shape[0]], fontsize=8)
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            if not math.isnan(A[i, j]):
                ax.text(j, i, f"{100 * A[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if A[i, j] < 0.6 else "black")
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after onboarding")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def plot_curves(results: dict[str, Any], key: str, path: Path, ylabel: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: the application's backend is left alone

    tasks = results["tasks"]
    fig = Figure(figsize=(max(6.0, 0.75 * len(tasks) + 2.5), 3.8), dpi=100)
    ax = fig.subplots()
    for s in results["strategies"]:
        ys = results["metrics"][s][key]
        _plot_steps(ax, ys, 100.0, markersize=4, label=s)
    _task_axis(ax, tasks)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)


def write_report(result: Any, out: str | os.PathLike) -> Path:
    """Write results.json, report.md and the PNG plots into ``out`` (created; files replaced)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = result if isinstance(result, dict) else result.to_dict()
    dump_json(results, out / "results.json")
    import json

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))  # render from what was stored
    for s in results["strategies"]:
        plot_heatmap(results["R"][s], results["tasks"], out / f"R_{_slug(s)}.png", f"R: {s}")
    plot_curves(results, "acc_curve", out / "acc_curve.png", "ACC (%)")
    plot_curves(results, "forgetting_curve", out / "forgetting_curve.png", "forgetting (points)")
    if results.get("extra", {}).get("steps", {}).get("seconds"):
        plot_steps(results, out / "steps.png")
    (out / "report.md").write_text(render_markdown(results), encoding="utf-8")
    return out


# --------------------------------------------------------------------------- MLflow

def tracking_location(registry: str | os.PathLike | None) -> tuple[str, str | None]:
    """(tracking URI, artifact root) of a registry location, resolved as the registry does it.

    A directory means ``sqlite:///<dir>/mlflow.db`` with artifacts under ``<dir>/artifacts``
    (:func:`adaptreg.registry.resolve_location`); the URI is always set explicitly because
    MLflow 3 would otherwise default to ``./mlflow.db``.
    """
    from ..registry import resolve_location

    loc = resolve_location(registry)
    if loc.db_path is not None:
        loc.db_path.parent.mkdir(parents=True, exist_ok=True)
    return loc.uri, loc.artifact_root


def log_to_mlflow(result: Any, registry: Any = None, experiment: str = "adaptreg-continual",
                  report_dir: str | os.PathLike | None = None, run_name: str | None = None) -> str:
    """One parent run (settings, report folder) and a child run per strategy (metrics, curves, R).

    Every write goes through the registry's one write path (:meth:`adaptreg.registry.Registry.write`:
    the local lock and retries), in an experiment of its own. Undefined metrics are not logged
    as numbers (MLflow has no null); they appear as ``None`` in the child run's ``metrics.json``
    artifact. Returns the parent run id.
    """
    from mlflow.entities import Metric, Param

    from ..registry import TAG, as_registry

    results = result if isinstance(result, dict) else result.to_dict()
    reg = as_registry(registry)
    client, write = reg.client, reg.write
    exp_id = reg.experiment_id(experiment)
    now = int(time.time() * 1000)
    tags = {"adaptreg.kind": "continual-benchmark", "scenario": results["scenario"], "tasks": ",".join(results["tasks"]),
            TAG + "pid": str(os.getpid()), TAG + "host": socket.gethostname()}
    parent = write(client.create_run, exp_id, run_name=run_name or f"continual-{results['scenario']}", tags=tags)
    pid = parent.info.run_id
    try:
        settings = _flat(results.get("settings", {}))
        settings["tasks"] = ",".join(results["tasks"])
        settings["strategies"] = ",".join(results["strategies"])
        params = [Param(k, str(v)[:500]) for k, v in list(settings.items())[:200]]
        metrics = [Metric(f"probe_acc.{_metric_key(t)}", float(b), now, 0)
                   for t, b in zip(results["tasks"], results["probe_baseline"]) if b is not None]
        for i in range(0, max(len(params), len(metrics)), 100):
            write(client.log_batch, pid, metrics=metrics[i:i + 100], params=params[i:i + 100])
        write(client.log_dict, pid, results, "results.json")
        if report_dir is not None:
            write(client.log_artifacts, pid, str(report_dir), "report")
        for s in results["strategies"]:
            m = results["metrics"][s]
            child = write(client.create_run, exp_id, run_name=s, tags={**tags, "mlflow.parentRunId": pid, "strategy": s})
            cid = child.info.run_id
            try:
                ms = [Metric(k, float(m[k]), now, 0) for k in ("acc", "bwt", "forgetting", "fwt", "probe_gain")
                      if m[k] is not None]
                for key in ("acc_curve", "forgetting_curve", "bwt_curve"):
                    ms += [Metric(key.replace("_curve", "_after_step"), float(v), now, step)
                           for step, v in enumerate(m[key]) if v is not None]
                if results.get("timings", {}).get(s) is not None:
                    ms.append(Metric("seconds", float(results["timings"][s]), now, 0))
                steps = results.get("extra", {}).get("steps") or {}
                for key, name in (("seconds", "step_seconds"), ("peak_rss_mb", "step_peak_rss_mb")):
                    ms += [Metric(name, float(v), now, step) for step, v in enumerate(steps.get(key, {}).get(s) or [])
                           if v is not None]
                if s == "adaptreg":
                    ms += [Metric("router_accuracy_after_step", float(v), now, step)
                           for step, v in enumerate(results.get("extra", {}).get("routing_accuracy") or []) if v is not None]
                for i in range(0, len(ms), 100):
                    write(client.log_batch, cid, metrics=ms[i:i + 100])
                R = results["R"][s]
                table = {"after": results["tasks"][: len(R)]}
                for j, t in enumerate(results["tasks"]):
                    table[t] = [None if row[j] is None else float(row[j]) for row in R]
                write(client.log_table, cid, _table_frame(table), "R.json")
                write(client.log_dict, cid, {"tasks": results["tasks"], "R": R, "metrics": m}, "metrics.json")
                if report_dir is not None and (Path(report_dir) / f"R_{_slug(s)}.png").is_file():
                    write(client.log_artifact, cid, str(Path(report_dir) / f"R_{_slug(s)}.png"))
                write(client.set_terminated, cid, "FINISHED")
            except BaseException:
                write(client.set_terminated, cid, "FAILED")
                raise
        write(client.set_terminated, pid, "FINISHED")
    except BaseException:
        write(client.set_terminated, pid, "FAILED")
        raise
    return pid


def _table_frame(table: dict[str, list]) -> Any:
    try:
        import pandas as pd

        return pd.DataFrame(table)
    except ImportError:  # pragma: no cover - mlflow depends on pandas
        return table


def _metric_key(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_./ " else "_" for c in s)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
