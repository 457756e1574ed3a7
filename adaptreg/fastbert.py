"""A BERT encoder for prediction that loads without importing transformers.

``adaptreg predict`` is a short process: importing transformers and building its model and
tokenizer cost more than the prediction itself. For the plain BERT family (``model_type`` "bert",
absolute positions, GELU or ReLU: all-MiniLM-L6-v2 among them) this module reads the same
directory with torch, safetensors and the ``tokenizers`` library only. Module and parameter names
are transformers' own (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``,
...), so the trunk, the router and the Predictor's LoRA folding run on it unchanged, and a test
checks its hidden states and predictions against transformers' ``BertModel``.

A base's fingerprint is a hash of transformers' view of its config plus every tensor. Without
transformers the config part cannot be rebuilt, so the fingerprint of a base directory is cached
(``<cache>/base-fingerprints.json``) the first time a fast load of the base finds none and falls
back to transformers, keyed by a sha256 of its config and weight files: until then, and whenever a
file changes, loading goes the transformers way. Anything this module does not cover (another architecture, relative
positions, a file it does not recognise) also goes the transformers way: :func:`load` returns None.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ACTIVATIONS = ("gelu", "relu")
CACHE_FILE = "base-fingerprints.json"
_KEY_VERSION = "fastbert-1"


class Config:
    """The attributes of ``config.json`` that adaptreg reads (``model_type``, ``hidden_size``...)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def supported(config: dict[str, Any]) -> bool:
    return (config.get("model_type") == "bert" and config.get("position_embedding_type", "absolute") == "absolute"
            and config.get("hidden_act", "gelu") in ACTIVATIONS and not config.get("is_decoder", False)
            and not config.get("auto_map"))


def content_key(directory: str | Path) -> str | None:
    """sha256 over config.json and the safetensors weight files (names and bytes); None if absent."""
    d = Path(directory)
    weights = sorted(d.glob("*.safetensors"))
    if not (d / "config.json").is_file() or not weights:
        return None
    h = hashlib.sha256(_KEY_VERSION.encode())
    for f in [d / "config.json", *weights]:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _cache_path() -> Path:
    from .registry.location import default_cache_dir

    return default_cache_dir() / CACHE_FILE


def cached_fingerprint(key: str) -> str | None:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value.startswith("sha256:") else None


def remember_fingerprint(key: str, fingerprint: str) -> None:
    """Record a fingerprint computed through transformers; best effort (a read-only cache is fine)."""
    from ._util import atomic_file

    path = _cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    if data.get(key) == fingerprint:
        return
    data[key] = fingerprint
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, encoding="utf-8") as f:
            f.write(json.dumps(data, indent=1, sort_keys=True))
    except OSError as exc:  # pragma: no cover - read-only home
        logger.debug("cannot write %s: %s", path, exc)


# --------------------------------------------------------------------------- the model

def _modules() -> Any:
    """The torch module classes, built on first use (this module imports without torch)."""
    import torch
    from torch import nn

    class Embeddings(nn.Module):
        def __init__(self, c: Config):
            super().__init__()
            self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=getattr(c, "pad_token_id", 0))
            self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
            self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
            self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

        def forward(self, input_ids: Any = None, **_: Any) -> Any:
            length = input_ids.shape[1]
            pos = torch.arange(length, device=input_ids.device)
            h = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
            return self.LayerNorm(h)

    class SelfAttention(nn.Module):
        def __init__(self, c: Config):
            super().__init__()
            self.heads = c.num_attention_heads
            self.query = nn.Linear(c.hidden_size, c.hidden_size)
            self.key = nn.Linear(c.hidden_size, c.hidden_size)
            self.value = nn.Linear(c.hidden_size, c.hidden_size)

        def forward(self, h: Any, mask: Any) -> Any:
            b, n, width = h.shape

            def split(x: Any) -> Any:
                return x.view(b, n, self.heads, width // self.heads).transpose(1, 2)

            out = torch.nn.functional.scaled_dot_product_attention(split(self.query(h)), split(self.key(h)),
                                                                   split(self.value(h)), attn_mask=mask)
            return out.transpose(1, 2).reshape(b, n, width)

    class DenseNorm(nn.Module):
        def __init__(self, c: Config, width_in: int):
            super().__init__()
            self.dense = nn.Linear(width_in, c.hidden_size)
            self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

        def forward(self, x: Any, residual: Any) -> Any:
            return self.LayerNorm(self.dense(x) + residual)

    class Attention(nn.Module):
        def __init__(self, c: Config):
            super().__init__()
            self.self = SelfAttention(c)
            self.output = DenseNorm(c, c.hidden_size)

    class Intermediate(nn.Module):
        def __init__(self, c: Config):
            super().__init__()
            self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
            self.act = nn.GELU() if c.hidden_act == "gelu" else nn.ReLU()

        def forward(self, x: Any) -> Any:
            return self.act(self.dense(x))

    class Layer(nn.Module):
        def __init__(self, c: Config):
            super().__init__()
            self.attention = Attention(c)
            self.intermediate = Intermediate(c)
            self.output = DenseNorm(c, c.intermediate_size)

        def forward(self, h: Any, mask: Any = None, *_: Any, **__: Any) -> Any:
            a = self.attention.output(self.attention.self(h, mask), h)
            return self.output(self.intermediate(a), a)

    class Encoder(nn.Module):
        def __init__(self, c: Config):
            super().__init__()
            self.layer = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))

    class FastBert(nn.Module):
        """Embeddings + encoder layers, eval only; ``additive_mask`` is the mask the layers take."""

        def __init__(self, c: Config):
            super().__init__()
            self.config = c
            self.embeddings = Embeddings(c)
            self.encoder = Encoder(c)

        @staticmethod
        def additive_mask(mask: Any, dtype: Any) -> Any:
            return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

        def forward(self, input_ids: Any, attention_mask: Any, output_hidden_states: bool = False, **_: Any) -> Any:
            """transformers' output fields: ``last_hidden_state`` and, when asked, ``hidden_states``."""
            from types import SimpleNamespace

            h = self.embeddings(input_ids=input_ids)
            m = self.additive_mask(attention_mask, h.dtype)
            states = [h]
            for layer in self.encoder.layer:
                h = layer(h, m)
                states.append(h)
            return SimpleNamespace(last_hidden_state=h, hidden_states=tuple(states) if output_hidden_states else None)

    return FastBert


def build(config: dict[str, Any], state: dict[str, Any]) -> Any | None:
    """The model from a config dict and a transformers BertModel state dict; None if names differ."""
    import torch

    c = Config(config)
    model = _modules()(c)
    own = model.state_dict()
    wanted = {}
    for k, v in state.items():
        name = k[len("bert."):] if k.startswith("bert.") else k
        if name in own:
            wanted[name] = v
        elif not name.startswith(("pooler.", "cls.")) and name != "embeddings.position_ids":
            logger.debug("fastbert: unknown weight %s", k)
            return None
    if set(wanted) != set(own) or any(tuple(wanted[k].shape) != tuple(own[k].shape) for k in own):
        return None
    model.load_state_dict({k: v.to(torch.float32) for k, v in wanted.items()})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Tokenizer:
    """The slice of a transformers fast tokenizer that prediction uses, over ``tokenizer.json``."""

    def __init__(self, tok: Any, pad_token_id: int):
        self._tok = tok
        self._tok.no_padding()
        self._tok.no_truncation()
        self.pad_token_id = pad_token_id

    def __call__(self, texts: list[str], truncation: bool = False, max_length: int | None = None, **_: Any) -> dict:
        if truncation and max_length:
            self._tok.enable_truncation(int(max_length))
        try:
            enc = self._tok.encode_batch(list(texts))
        finally:
            self._tok.no_truncation()
        return {"input_ids": [e.ids for e in enc]}

    def pad(self, batch: dict, return_tensors: str = "pt", **_: Any) -> dict:
        """Right-pad ``batch["input_ids"]`` into tensors with an attention mask (transformers' ``pad``)."""
        from .trunk import pad

        input_ids, mask = pad(batch["input_ids"], self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": mask}


def _config(directory: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def eligible_key(directory: str | Path) -> str | None:
    """The cache key of a directory this module can load (:func:`content_key`), else None."""
    d = Path(directory)
    config = _config(d)
    if config is None or not supported(config) or not (d / "tokenizer.json").is_file() \
            or not (d / "model.safetensors").is_file():
        return None
    return content_key(d)


def load(directory: str | Path, key: str | None = None) -> tuple[Any, Any, str] | None:
    """``(model, tokenizer, fingerprint)`` without transformers, or None where this path does not apply
    (``key``: :func:`eligible_key` of the directory, when the caller has it already)."""
    d = Path(directory)
    key = key or eligible_key(d)
    fp = cached_fingerprint(key) if key else None
    config = _config(d) if fp else None
    if fp is None or config is None:
        return None
    try:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer as RustTokenizer

        model = build(config, load_file(str(d / "model.safetensors")))
        if model is None:
            return None
        tok = RustTokenizer.from_file(str(d / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - any surprise: the transformers path decides
        logger.debug("fastbert: %s", exc)
        return None
    pad = config.get("pad_token_id")
    pad = pad if isinstance(pad, int) else (tok.token_to_id("[PAD]") or 0)
    return model, Tokenizer(tok, pad), fp


__all__ = ["Config", "Tokenizer", "build", "cached_fingerprint", "content_key", "eligible_key", "load",
           "remember_fingerprint", "supported"]
