"""The settings of ``adaptreg serve``: one dataclass, one help text per field (the CLI reads them)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``: reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeSettings:
    """What ``adaptreg serve`` serves and how (``create_app(settings)``)."""

    registry: str | None = field(default=None, metadata={"help": "Registry location (directory or MLflow URI); default: $ADAPTREG_REGISTRY, else ./registry."})
    base: str | None = field(default=None, metadata={"help": "Base model (minilm, a directory or a hub id); default: the base the tasks were built on."})
    tasks: list[str] | None = field(default=None, metadata={"help": "Serve only these tasks; default: every task in the registry, new ones included as they appear."})
    alias: str = field(default="production", metadata={"help": "Default version per task: this alias where set, else the task's latest ready version."})
    threshold: float | None = field(default=None, metadata={"help": "Router abstention threshold when a request gives none (> 0); default: the router's own (1.0)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8080, metadata={"help": "TCP port to listen on (0: any free port)."})
    allow_remote: bool = field(default=False, metadata={"help": "Allow a host other than loopback (the service has no authentication)."})
    max_batch: int = field(default=64, metadata={"help": "Micro-batching: most rows one inference call takes."})
    max_wait_ms: float = field(default=5.0, metadata={"help": "Micro-batching: longest a request waits for others to join its batch."})
    batch_size: int = field(default=32, metadata={"help": "Rows per forward pass inside one inference call."})
    bf16: bool = field(default=False, metadata={"help": "Run the layers under bf16 autocast (faster on CPUs with AVX-512 bf16 or AMX; see docs/benchmarks.md)."})
    poll_s: float = field(default=2.0, metadata={"help": "Seconds between registry checks for promoted, new or archived versions (0 = never)."})
    max_adapters: int = field(default=16, metadata={"help": "Adapter branches kept in memory (least recently used evicted)."})
    max_aliases: int = field(default=4, metadata={"help": "Aliases requests may name that are kept loaded at once, the default one included."})
    max_texts: int = field(default=1024, metadata={"help": "Most texts one request may send."})
    max_chars: int = field(default=20_000, metadata={"help": "Most characters in one text; a longer one gets 422."})
    max_queue: int = field(default=16384, metadata={"help": "Most rows waiting for inference; beyond it requests get 503."})
    max_body_mb: float = field(default=16.0, metadata={"help": "Largest request body in MB; beyond it requests get 413."})

    def __post_init__(self) -> None:
        ints = [("port", 0, 65535), ("max_batch", 1, None), ("batch_size", 1, None), ("max_adapters", 1, None),
                ("max_aliases", 1, None), ("max_texts", 1, None), ("max_chars", 1, None), ("max_queue", 1, None)]
        for name, lo, hi in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
                raise ConfigError(f"{name} == {v!r}, must be an integer {bound}")
        for name in ("max_wait_ms", "poll_s", "max_body_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{name} == {v!r}, must be a finite number >= 0")
        if self.max_body_mb <= 0:
            raise ConfigError(f"max_body_mb == {self.max_body_mb!r}, must be > 0")
        if self.threshold is not None and (not isinstance(self.threshold, (int, float))
                                           or math.isnan(self.threshold) or not self.threshold > 0):
            raise ConfigError(f"threshold == {self.threshold!r}, must be a number > 0 (default 1.0; larger abstains less)")
        if self.max_queue < self.max_texts:
            raise ConfigError(f"max_queue == {self.max_queue} is below max_texts == {self.max_texts}: "
                              "one full request could never be queued")
        if self.tasks is not None:
            self.tasks = [t.strip() for t in self.tasks if t and t.strip()]
            if not self.tasks:
                raise ConfigError("tasks is empty: name at least one task, or None for every task")
        from ..registry import validate_alias

        validate_alias(self.alias)
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(f"host {self.host!r} is not a loopback address and the service has no authentication: "
                              "serve on 127.0.0.1 behind a proxy that checks callers, or pass --allow-remote")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of one field (for the CLI's options)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)
