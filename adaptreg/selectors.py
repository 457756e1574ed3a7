"""``TASK[@VERSION]`` selectors (``--init-from``, ``merge`` sources): parsed and checked before any work.

Light on purpose (no torch, no mlflow): the CLI calls it before loading anything.
"""

from __future__ import annotations

from .artifact import validate_task_name
from .errors import ConfigError


def parse_selector(spec: str, option: str = "TASK") -> tuple[str, int | None]:
    """``"news"`` -> ``("news", None)``; ``"news@3"`` or ``"news@v3"`` -> ``("news", 3)``.

    ``option`` names where the selector came from (``--init-from``, ``TASK``) in the error,
    a :class:`~adaptreg.errors.ConfigError` that shows the expected form.
    """
    text = str(spec).strip()
    task, at, version = text.partition("@")
    task, version = task.strip(), version.strip()
    form = f"use TASK or TASK@VERSION, e.g. {task or 'news'}@2"
    if not task:
        raise ConfigError(f"{option} {spec}: no task name before '@'; {form}")
    try:
        validate_task_name(task)
    except ConfigError as exc:
        raise ConfigError(f"{option} {spec}: {exc}") from None
    if not at:
        return task, None
    if not version:
        raise ConfigError(f"{option} {spec}: nothing after '@'; {form}, or drop the '@' for the default version")
    digits = version[1:] if version[:1] in ("v", "V") else version
    if not digits.isdigit() or int(digits) < 1:
        hint = f" (an alias? find its version with `adaptreg lookup {task} --alias {version}`)" \
            if version[:1].isalpha() else ""
        raise ConfigError(f"{option} {spec}: {version!r} is not a version number (a positive integer); {form}{hint}")
    return task, int(digits)


def format_selector(task: str, version: int | None) -> str:
    """The canonical text of a parsed selector: ``news`` or ``news@3``."""
    return task if version is None else f"{task}@{version}"
