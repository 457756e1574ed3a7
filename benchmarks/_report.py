"""Shared by the benchmark scripts: print the result as JSON on stdout and optionally save it."""

from __future__ import annotations

import json
from typing import Any


def emit(out: dict[str, Any], path: str | None) -> None:
    print(json.dumps(out, indent=2))
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
