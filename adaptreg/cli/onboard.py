"""``adaptreg onboard``: train, evaluate and register one task's adapter."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from ._common import emit, json_option, log, out_dir_options, registry_option, resolve_out_dir

# Option specs are read from the dataclass configs without importing torch: config.py is light.
from ..config import ADAPTER_KINDS, HEAD_INITS, SCHEDULES, SELECTS, TRUNCATIONS, LoraSettings, TrainSettings

_CHOICES = {"kind": ADAPTER_KINDS, "schedule": SCHEDULES, "truncation": TRUNCATIONS, "head_init": HEAD_INITS,
            "select": SELECTS}


def _options_from(cls: type) -> Callable:
    """Turn each dataclass field into a click option with the field's help and default."""

    def decorate(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
            name = "--" + fld.name.replace("_", "-")
            help_ = fld.metadata.get("help", "")
            if fld.type in ("bool", bool):
                f = click.option(name, f"opt_{fld.name}", is_flag=True, default=fld.default, help=help_)(f)
            elif fld.name == "targets":
                f = click.option(name, f"opt_{fld.name}", default=None, metavar="M1,M2",
                                 help=help_ + " Comma-separated.")(f)
            elif fld.name in _CHOICES:
                f = click.option(name, f"opt_{fld.name}", type=click.Choice(_CHOICES[fld.name]), default=fld.default,
                                 show_default=True, help=help_)(f)
            else:
                f = click.option(name, f"opt_{fld.name}", type=type(fld.default), default=fld.default,
                                 show_default=True, help=help_)(f)
        return f

    return decorate


def _settings(cls: type, opts: dict[str, Any]) -> Any:
    values = {f.name: opts.pop(f"opt_{f.name}") for f in dataclasses.fields(cls)}
    if "targets" in values and values["targets"] is not None:
        values["targets"] = [t.strip() for t in values["targets"].split(",")]
    return cls(**values)


@click.command()
@click.argument("task")
@click.option("--data", required=True, metavar="PATH|NAME", help="CSV, JSONL or Parquet file, or a catalog name (see `adaptreg data list`).")
@click.option("--text-col", default="text", show_default=True, help="Column holding the text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the label.")
@click.option("--val", "val_path", default=None, metavar="PATH", help="Explicit validation file (else a stratified split).")
@click.option("--test", "test_path", default=None, metavar="PATH", help="Explicit test file (else a stratified split).")
@click.option("--drop-empty", is_flag=True, help="Drop rows with empty text instead of refusing the file.")
@click.option("--max-per-class", type=int, default=None, help="Cap training examples per class (quick runs).")
@click.option("--base", default="minilm", show_default=True, help="Base model: 'minilm', a model directory or a hub id.")
@_options_from(LoraSettings)
@_options_from(TrainSettings)
@click.option("--init-from", default=None, metavar="TASK[@VERSION]", help="Start from an existing registered adapter.")
@click.option("--no-probe", is_flag=True, help="Skip the frozen-base linear probe baseline.")
@click.option("--no-route", is_flag=True, help="Do not add the task to the registry's router.")
@out_dir_options("Also write the adapter artifact to the folder DIR.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out folder.")
@click.option("--no-register", is_flag=True, help="Do not register in the registry (needs --out).")
@click.option("--new-labels", is_flag=True,
              help="Allow a new version of a registered task to have another label set (refused otherwise).")
@registry_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
def onboard(task: str, data: str, text_col: str, label_col: str, val_path: str | None, test_path: str | None,
            drop_empty: bool, max_per_class: int | None, base: str, init_from: str | None, no_probe: bool, no_route: bool,
            out: str | None, legacy_output: str | None, overwrite: bool, no_register: bool, new_labels: bool,
            registry: str | None, quiet: bool, as_json: bool, **opts: Any) -> None:
    """Train a LoRA adapter for TASK on a frozen base, evaluate it beside a linear probe, register it.

    \b
    Examples:
      adaptreg onboard news --data bbc-news
      adaptreg onboard tickets --data tickets.csv --text-col body --label-col queue --rank 4
      adaptreg onboard news --data bbc-news --kind dora --epochs 2 --out adapters/news --no-register --json
    """
    lora = _settings(LoraSettings, opts)
    train = _settings(TrainSettings, opts)
    # Checks that would otherwise fail after training: the output folder and selector syntax.
    output = resolve_out_dir(out, legacy_output, register=not no_register, overwrite=overwrite)
    if init_from is not None:
        from ..selectors import format_selector, parse_selector

        init_from = format_selector(*parse_selector(init_from, "--init-from"))
    from ..train import onboard as run_onboard

    log(f"onboarding {task!r} from {data} on base {base} ({lora.kind}, rank {lora.rank})")
    result = run_onboard(task, data, base=base, lora=lora, train=train, text_col=text_col, label_col=label_col,
                         val=val_path, test=test_path, drop_empty=drop_empty, max_per_class=max_per_class,
                         output=output, overwrite=overwrite, registry=registry, register=not no_register,
                         init_from=init_from, probe=not no_probe, route=not no_route, progress=not quiet,
                         new_labels=new_labels)
    emit(result.summary(), as_json, _human)


def _human(s: dict[str, Any]) -> str:
    m = s["metrics"]
    sel = s.get("selection") or {}

    def pct(v: Any) -> str:
        return "      -" if v is None else f"{100 * v:6.2f}%"

    def gain(a: Any, b: Any) -> str:
        return "" if a is None or b is None else f"{100 * (a - b):+6.2f} pts"

    chosen = sel.get("chosen", "adapter")
    lines = [
        f"task            {s['task']}" + (f"  (version {s['version']})" if s.get("version") else ""),
        f"artifact        {s['artifact_dir']}",
        f"data            {s['data']['n_train']} train / {s['data']['n_val']} val / {s['data']['n_test']} test, "
        f"{len(s['data']['labels'])} labels, {s['data']['duplicates_removed']} duplicates removed",
        "",
        "                 adapter    probe      gain",
        f"validation      {pct(m.get('adapter_val_accuracy'))}  {pct(m.get('probe_val_accuracy'))}  "
        f"{gain(m.get('adapter_val_accuracy'), m.get('probe_val_accuracy'))}",
        f"test            {pct(m.get('adapter_test_accuracy'))}  {pct(m.get('probe_test_accuracy'))}  "
        f"{gain(m.get('adapter_test_accuracy'), m.get('probe_test_accuracy'))}",
        f"registered      {chosen}" + ("  (the probe won on validation: frozen base + probe head, no adapter)"
                                       if chosen == "probe" else "  (better than the probe on validation)"
                                       if m.get("probe_val_accuracy") is not None else ""),
        f"test accuracy   {pct(m['test_accuracy']).strip()}   macro-F1 {pct(m['test_macro_f1']).strip()}",
        "",
        f"trainable       {m['trainable_params']:,} params ({m['trainable_pct']:.3f}% of the base), "
        f"layers {s['adapter'].get('layers', 'all')}",
        f"adapter size    {m['adapter_bytes'] / 1024:.1f} KiB",
        f"training        {m['train_seconds']:.1f} s, {m['train_examples_per_s']:.1f} examples/s, "
        f"{s['training']['epochs_run']} of {s['training'].get('epochs_planned', s['training']['epochs_run'])} epochs "
        f"(best {s['training']['best_epoch']}), {s['training']['max_length']} tokens ({s['training'].get('truncation', 'head')})",
        f"base unchanged  {s['base_unchanged']}  ({s['base']['fingerprint'][:23]}...)",
    ]
    if s.get("seconds"):  # where the time went, largest first
        parts = sorted(s["seconds"].items(), key=lambda kv: -kv[1])
        lines.append(f"time            {sum(v for _, v in parts):.1f} s: "
                     + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in parts if v >= 0.05))
    return "\n".join(lines)


def register(group: click.Group) -> None:
    group.add_command(onboard)
