"""adaptreg: a continual-learning adapter manager and registry.

The public API is imported lazily so that ``import adaptreg`` (and ``adaptreg --help``)
does not pay for torch, transformers, peft or mlflow.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .errors import AdaptregError

_LAZY = {
    "onboard": "adaptreg.train",
    "OnboardResult": "adaptreg.train",
    "LoraSettings": "adaptreg.config",
    "TrainSettings": "adaptreg.config",
    "load_task": "adaptreg.data.tasks",
    "TaskData": "adaptreg.data.tasks",
    "Registry": "adaptreg.registry",
    "Router": "adaptreg.compose.router",
    "Predictor": "adaptreg.compose.predict",
    "fetch": "adaptreg.data.catalog",
    "list_datasets": "adaptreg.data.catalog",
}

__all__ = ["__version__", "AdaptregError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptreg' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
