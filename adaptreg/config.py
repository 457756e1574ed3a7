"""Dataclass configs for an adapter and its training; validation names the field and the value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

ADAPTER_KINDS = ("lora", "dora", "lora-fa")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class LoraSettings:
    """What the adapter is."""

    kind: str = field(default="lora", metadata={"help": "lora, dora (weight-decomposed) or lora-fa (A frozen at its random init, only B trains)."})
    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    targets: list[str] | None = field(default=None, metadata={"help": "Module names to adapt; None = the base family's default."})
    rslora: bool = field(default=False, metadata={"help": "Rank-stabilised scaling alpha / sqrt(r)."})

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(f"adapter kind {self.kind!r} is unknown: use one of {', '.join(ADAPTER_KINDS)}")
        if int(self.rank) < 1:
            raise ConfigError(f"rank == {self.rank}, must be >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout == {self.dropout}, must be in [0, 1)")
        if float(self.alpha) <= 0:
            raise ConfigError(f"alpha == {self.alpha}, must be > 0")
        if self.targets is not None and not [t for t in self.targets if t.strip()]:
            raise ConfigError("targets is empty: name at least one module (e.g. query,value) or omit it for the default")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainSettings:
    """How the adapter is trained. Defaults were chosen on validation data (docs/onboarding.md)."""

    epochs: int = field(default=3, metadata={"help": "Maximum epochs."})
    batch_size: int = field(default=16, metadata={"help": "Examples per step."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (adapter and head)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    schedule: str = field(default="linear", metadata={"help": "constant, linear or cosine decay after warm-up."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps with linear warm-up."})
    max_length: int = field(default=128, metadata={"help": "Tokens per text; longer texts are truncated."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max gradient norm (0 = off)."})
    patience: int = field(default=2, metadata={"help": "Early stopping: epochs without validation gain before stopping (0 = off)."})
    seed: int = field(default=0, metadata={"help": "Seed for split, init, shuffling and dropout."})
    fgm_epsilon: float = field(default=0.0, metadata={"help": "FGM adversarial training on embeddings: perturbation norm (0 = off)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Examples per evaluation step."})

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"), ("max_length", self.max_length >= 8, ">= 8"),
            ("grad_clip", self.grad_clip >= 0, ">= 0"), ("patience", self.patience >= 0, ">= 0"),
            ("fgm_epsilon", self.fgm_epsilon >= 0, ">= 0"), ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
        ]
        for name, ok, bound in checks:
            if not ok:
                raise ConfigError(f"{name} == {getattr(self, name)}, must be {bound}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is unknown: use one of {', '.join(SCHEDULES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
