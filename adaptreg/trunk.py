"""Trunk and branch: the frozen bottom layers of a base run once per text, adapters live above them.

A BERT-like base of ``n`` layers is cut at ``split = n - adapted_layers``: the embeddings and layers
``0 .. split-1`` are the *trunk*, never adapted and never trained; layers ``split .. n-1`` are the
*branch*, where the LoRA matrices sit (PEFT's ``layers_to_transform``, so the saved adapter is a
plain PEFT adapter that ``PeftModel.from_pretrained`` loads and runs end to end).

Because the trunk is frozen and deterministic, onboarding computes its output once per text
(:class:`TrunkCache`: token states in half precision, spilled to a disk-backed array above a RAM
budget) and every epoch, validation pass, the probe and the test report run only the branch.

Token ids come from :func:`tokenize`, which also implements ``head+tail`` truncation (keep the
first and the last tokens of an over-long text); training, evaluation and prediction share it.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import TRUNCATIONS
from .errors import ConfigError

logger = logging.getLogger(__name__)

HEAD_SHARE = 0.25  # head+tail: this share of the budget goes to the head, the rest to the tail (Sun et al. 2019 kept 128 + 382)
DEFAULT_RAM_BUDGET = 2 * 1024 ** 3


# --------------------------------------------------------------------------- tokens

def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int, truncation: str = "head") -> list[list[int]]:
    """Token ids per text with the tokenizer's special tokens, at most ``max_length`` in all.

    ``head`` keeps the first tokens (what ``truncation=True`` does); ``head+tail`` keeps the first
    ``HEAD_SHARE`` of the budget and the last tokens of the text, so a long text's ending survives.
    """
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"truncation {truncation!r} is unknown: use one of {', '.join(TRUNCATIONS)}")
    if truncation == "head":
        return [list(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    out = []
    for ids in tokenizer(list(texts), verbose=False)["input_ids"]:  # special tokens included: [CLS] ... [SEP] stay at the ends
        ids = list(ids)
        if len(ids) > max_length:
            head = int(max_length * HEAD_SHARE)
            ids = ids[:head] + ids[len(ids) - (max_length - head):]
        out.append(ids)
    return out


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Untruncated token count of each text, special tokens included."""
    return np.asarray([len(ids) for ids in tokenizer(list(texts), verbose=False)["input_ids"]])


def auto_max_length(tokenizer: Any, texts: Sequence[str], cap: int, quantile: float = 0.9, multiple: int = 16) -> int:
    """The task's own length: the ``quantile`` of its training texts' token counts, rounded up to a
    multiple of ``multiple``, at least 32 and at most ``cap``."""
    if not len(texts):
        return min(cap, 128)
    q = float(np.quantile(token_lengths(tokenizer, texts), quantile))
    return int(min(cap, max(32, multiple * math.ceil(q / multiple))))


def pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded ``input_ids`` and ``attention_mask`` tensors of a batch."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids, mask


def length_batches(lengths: Sequence[int], batch_size: int, generator: Any = None, chunk_batches: int = 50) -> list[list[int]]:
    """Batches of indices with little padding.

    Without ``generator``: sorted by length (inference). With one (a ``torch.Generator``): shuffle,
    sort by length inside chunks of ``chunk_batches`` batches, then shuffle the batches, so training
    order stays random while each batch holds texts of similar length.
    """
    import torch

    n = len(lengths)
    if generator is None:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    chunk = batch_size * chunk_batches
    batches = []
    for s in range(0, n, chunk):
        part = sorted(perm[s : s + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


# --------------------------------------------------------------------------- layers

def layer_stack(model: Any) -> tuple[Any, Any]:
    """(embeddings, list of layers) of a BERT-like encoder, or a clear error."""
    emb = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if emb is None or layers is None:
        raise ConfigError(f"{type(model).__name__} has no embeddings + encoder.layer stack: the trunk/branch split "
                          "supports BERT-like encoders; use --adapted-layers 0 (adapt every layer) for this base")
    return emb, layers


def num_layers(model: Any) -> int:
    return int(model.config.num_hidden_layers)


def split_point(model: Any, adapted_layers: int) -> int:
    """Index of the first adapted layer (``adapted_layers`` 0 = all layers adapted, split 0)."""
    n = num_layers(model)
    if adapted_layers < 0:
        raise ConfigError(f"adapted_layers == {adapted_layers}, must be >= 0 (0 = every layer)")
    if adapted_layers == 0 or adapted_layers >= n:
        return 0
    return n - adapted_layers


def _attention_mask(model: Any, hidden: Any, mask: Any) -> Any:
    """The mask format the layers expect (transformers >= 5: one helper; older: the extended mask)."""
    if hasattr(model, "additive_mask"):  # adaptreg.fastbert: no transformers import
        return model.additive_mask(mask, hidden.dtype)
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4.x
        return model.get_extended_attention_mask(mask, tuple(mask.shape))
    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def run_layers(model: Any, hidden: Any, mask: Any, layers: Sequence[Any]) -> Any:
    """Hidden states after ``layers`` run in order on ``hidden`` (``mask``: [B, L] attention mask, 1 = token)."""
    ext = _attention_mask(model, hidden, mask)
    for layer in layers:
        out = layer(hidden, ext)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def frozen_states(model: Any, input_ids: Any, mask: Any, upto: int, keep: Sequence[int] = ()) -> dict[int, Any]:
    """Hidden states ``{index: [B, L, H]}`` of the embeddings and the first ``upto`` layers, for
    hidden-state indices ``keep`` and ``upto`` itself (0 = embeddings output; no gradient)."""
    import torch

    emb, layers = layer_stack(model)
    wanted = {int(upto), *(int(i) for i in keep)}
    with torch.no_grad():
        h = emb(input_ids=input_ids)
        out = {0: h} if 0 in wanted else {}
        for i in range(max(wanted)):
            h = run_layers(model, h, mask, [layers[i]])
            if i + 1 in wanted:
                out[i + 1] = h
    return out


def pooled(states: dict[int, Any], mask: Any, indices: Sequence[int]) -> Any:
    """Mean-pooled float32 states of ``indices``, side by side."""
    import torch

    m = mask.unsqueeze(-1)
    return torch.cat([((states[i] * m.to(states[i].dtype)).sum(1) / m.sum(1).clamp(min=1e-9)).float()
                      for i in indices], -1)


def trunk_forward(model: Any, input_ids: Any, mask: Any, split: int) -> Any:
    """Hidden states after the embeddings and the first ``split`` layers (no gradient)."""
    return frozen_states(model, input_ids, mask, split)[split]


def branch_forward(model: Any, hidden: Any, mask: Any, split: int, upto: int | None = None) -> Any:
    """Run layers ``split .. upto-1`` (default: to the last) on trunk states ``hidden``."""
    _, layers = layer_stack(model)
    return run_layers(model, hidden, mask, list(layers)[split:upto])


# --------------------------------------------------------------------------- packed passes

class Packing:
    """Rows of different lengths stored back to back, ``[tokens, hidden]``, instead of padded.

    Every part of a BERT layer but attention works token by token, so a packed pass spends no
    time on padding in the linear layers (most of the cost); attention alone pads, to the
    longest row of the batch or of each of its :attr:`groups`, and masks. Built from the rows'
    token counts.
    """

    def __init__(self, lengths: Sequence[int], attention_groups: bool = True):
        import torch

        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        if len(self.lengths) == 0 or int(self.lengths.min()) < 1:
            raise ValueError("Packing needs at least one row, each of at least one token")
        self.offsets = torch.zeros(len(self.lengths) + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(self.lengths, 0)
        self.n, self.width = len(self.lengths), int(self.lengths.max())
        self.rows = torch.repeat_interleave(torch.arange(self.n), self.lengths)
        self.pos = torch.arange(int(self.offsets[-1])) - self.offsets[self.rows]
        self.key_mask = torch.arange(self.width)[None] < self.lengths[:, None]  # [rows, width], True = token
        self.groups = self._attention_groups() if attention_groups else None

    def _attention_groups(self, min_rows: int = 8, max_groups: int = 4) -> list[tuple[int, int, "Packing"]] | None:
        """Attention in consecutive groups of rows, each padded to its own longest row, where that
        saves at least a quarter of the padded attention's work (rows ordered by length: a small
        batch of random lengths); ``(first token, end token, the group's packing)`` each, or None."""
        n = self.n
        groups = min(max_groups, n // min_rows)
        if groups < 2:
            return None
        bounds = [round(g * n / groups) for g in range(groups + 1)]
        lengths = self.lengths.tolist()
        cost = sum((b - a) * max(lengths[a:b]) ** 2 for a, b in zip(bounds, bounds[1:]))
        if cost > 0.75 * n * self.width ** 2:
            return None
        return [(int(self.offsets[a]), int(self.offsets[b]), Packing(lengths[a:b], attention_groups=False))
                for a, b in zip(bounds, bounds[1:])]

    def pad(self, x: Any) -> Any:
        """``[tokens, ...]`` -> ``[rows, width, ...]`` (zeros after each row's end)."""
        out = x.new_zeros((self.n, self.width, *x.shape[1:]))
        out[self.rows, self.pos] = x
        return out

    def unpad(self, x: Any) -> Any:
        """``[rows, width, ...]`` -> ``[tokens, ...]``."""
        return x[self.rows, self.pos]

    def mean(self, x: Any) -> Any:
        """Mean over each row's tokens, ``[rows, hidden]`` (mean pooling without padding)."""
        out = x.new_zeros((self.n, x.shape[-1])).index_add_(0, self.rows, x)
        return out / self.lengths[:, None].to(x.dtype)

    def split(self, x: Any) -> list[Any]:
        """One ``[length, ...]`` view per row."""
        return list(x.split(self.lengths.tolist()))


# the linear modules of a BERT layer, as packed_layer names them to its ``linear`` hook
PACKED_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                  "intermediate.dense", "output.dense")


def packable(model: Any) -> bool:
    """Whether :func:`packed_layer` reproduces this base's layers: BERT with absolute positions,
    transformers' or :mod:`adaptreg.fastbert`'s modules (the same names)."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "bert" or getattr(cfg, "position_embedding_type", "absolute") != "absolute" \
            or getattr(cfg, "is_decoder", False):
        return False
    try:
        emb, layers = layer_stack(model)
    except ConfigError:
        return False
    need = (*PACKED_LINEARS, "attention.output.LayerNorm", "output.LayerNorm")
    if not all(hasattr(emb, a) for a in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")):
        return False
    for layer in layers:
        try:
            for name in need:
                layer.get_submodule(name)
        except AttributeError:
            return False
        inter = layer.intermediate
        if getattr(inter, "intermediate_act_fn", None) is None and getattr(inter, "act", None) is None:
            return False
    return True


def packed_embed(model: Any, ids: Sequence[Sequence[int]], pk: Packing) -> Any:
    """The embeddings' output of rows of token ids, packed (token type 0, absolute positions)."""
    import torch

    emb = model.embeddings
    flat = torch.as_tensor([t for row in ids for t in row], dtype=torch.long)
    h = emb.word_embeddings(flat) + emb.position_embeddings(pk.pos) + emb.token_type_embeddings.weight[0]
    return emb.LayerNorm(h)


def packed_layer(layer: Any, h: Any, pk: Packing, heads: int, linear: Any = None) -> Any:
    """One BERT layer (eval) on packed states ``[tokens, hidden]``: what the layer computes on the
    padded batch, at the rows' tokens, without the padding's work outside attention.

    ``linear(name, module, x)``, when given, computes each linear module's output (``name`` as in
    ``layer.get_submodule``, e.g. ``attention.self.query``): a hook for per-row adapter updates.
    """
    import torch

    def lin(name: str, x: Any) -> Any:
        module = layer.get_submodule(name)
        return module(x) if linear is None else linear(name, module, x)

    width = h.shape[-1]
    q, k, v = lin("attention.self.query", h), lin("attention.self.key", h), lin("attention.self.value", h)

    def attend(p: Packing, lo: int, hi: int) -> Any:
        def split_heads(x: Any) -> Any:
            return p.pad(x[lo:hi]).view(p.n, p.width, heads, width // heads).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v),
                                                               attn_mask=p.key_mask[:, None, None, :])
        return p.unpad(out.transpose(1, 2).reshape(p.n, p.width, width))

    if pk.groups is None:
        a = attend(pk, 0, h.shape[0])
    else:
        a = torch.cat([attend(p, lo, hi) for lo, hi, p in pk.groups])
    a = layer.attention.output.LayerNorm(lin("attention.output.dense", a) + h)
    inter = layer.intermediate
    act = getattr(inter, "intermediate_act_fn", None) or inter.act
    return layer.output.LayerNorm(lin("output.dense", act(lin("intermediate.dense", a))) + a)


# --------------------------------------------------------------------------- cache

class TrunkCache:
    """Trunk token states of a list of texts, computed once, kept in half precision.

    Rows are stored back to back without padding: ``bytes_per_example = tokens x hidden x 2``
    (MiniLM, 128 tokens: at most 98,304 bytes). Above ``ram_budget`` bytes the store is a
    ``numpy.memmap`` in a temporary file (deleted with the cache). ``pool``: hidden-state indices
    (at most ``split``) whose mean-pooled states are kept too (``pooled[i]``, float32 [n, hidden]):
    the router's features come out of the same pass.
    """

    def __init__(self, model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, split: int,
                 truncation: str = "head", batch_size: int = 64, ram_budget: int = DEFAULT_RAM_BUDGET,
                 ids: list[list[int]] | None = None, pool: Sequence[int] = ()):
        import torch

        self.split = split
        self.ids = ids if ids is not None else tokenize(tokenizer, texts, max_length, truncation)
        self.lengths = np.asarray([len(x) for x in self.ids], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        hidden = int(model.config.hidden_size)
        total = int(self.offsets[-1])
        self.nbytes = total * hidden * 2
        self._file = None
        if self.nbytes > ram_budget:
            fd, self._file = tempfile.mkstemp(prefix="adaptreg-trunk-", suffix=".f16")
            os.close(fd)
            self.data = np.memmap(self._file, dtype=np.float16, mode="w+", shape=(max(total, 1), hidden))
            logger.info("trunk cache %.0f MB > RAM budget: on disk at %s", self.nbytes / 1e6, self._file)
        else:
            self.data = np.empty((max(total, 1), hidden), dtype=np.float16)
        pad_id = tokenizer.pad_token_id or 0
        pool = [int(i) for i in pool]
        if any(not 0 <= i <= split for i in pool):
            raise ConfigError(f"pooled hidden states {pool} must lie in the trunk (0..{split})")
        self.pooled = {i: np.zeros((len(self.ids), hidden), dtype=np.float32) for i in pool}
        with torch.inference_mode():
            for idx in length_batches(self.lengths.tolist(), batch_size):
                input_ids, mask = pad([self.ids[i] for i in idx], pad_id)
                states = frozen_states(model, input_ids, mask, split, pool)
                for k in pool:
                    self.pooled[k][idx] = pooled(states, mask, [k]).numpy()
                h = states[split].to(torch.float16).numpy()
                for row, i in enumerate(idx):
                    self.data[self.offsets[i] : self.offsets[i + 1]] = h[row, : self.lengths[i]]

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def bytes_per_example(self) -> float:
        return self.nbytes / max(1, len(self))

    def batch(self, idx: Sequence[int]) -> tuple[Any, Any]:
        """float32 states [B, L, H] (zero-padded) and the attention mask [B, L] of rows ``idx``."""
        import torch

        width = int(self.lengths[list(idx)].max())
        out = np.zeros((len(idx), width, self.data.shape[1]), dtype=np.float32)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = int(self.lengths[i])
            out[row, :n] = self.data[self.offsets[i] : self.offsets[i + 1]]
            mask[row, :n] = 1
        return torch.from_numpy(out), mask

    def close(self) -> None:
        if self._file is not None:
            del self.data
            try:
                os.unlink(self._file)
            except OSError:
                pass
            self._file = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


class CacheView:
    """Rows of one or more trunk caches seen as one cache (``rows``: ``(cache, index)`` pairs):
    the cross-validation folds of onboarding's probe-versus-adapter decision."""

    def __init__(self, rows: Sequence[tuple[TrunkCache, int]]):
        self.rows = list(rows)
        self.split = self.rows[0][0].split if self.rows else 0
        self.lengths = np.asarray([c.lengths[i] for c, i in self.rows], dtype=np.int64)
        self.ids = [c.ids[i] for c, i in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Sequence[int]) -> tuple[Any, Any]:
        import torch

        parts = [self.rows[i][0].batch([self.rows[i][1]]) for i in idx]
        width = max(int(m.shape[1]) for _, m in parts)
        h = torch.zeros((len(idx), width, parts[0][0].shape[2]))
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, (hh, mm) in enumerate(parts):
            h[r, : hh.shape[1]] = hh[0]
            mask[r, : mm.shape[1]] = mm[0]
        return h, mask
