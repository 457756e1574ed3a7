"""Shared fixtures: a tiny randomly initialised BERT built from a config (no network, seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# Tiny models gain nothing from intra-op threads; one thread avoids oversubscription when
# several test processes (concurrency tests, subprocess CLI runs) share the 2 CI cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = (
    "the a an of to and in is it for on with as was at by this that from be are or have not "
    "sport match team goal win won player game season cup league coach score "
    "business market bank shares profit company economy price sales growth firm "
    "tech computer phone software internet digital data users online mobile "
    "politics election minister government party vote labour tory policy law "
    "film music star award show actor band album movie festival "
    "good bad great awful love hate happy sad fine boring fun terrible "
    "spam free money offer click win prize cash urgent buy now"
).split()


def _write_vocab(path: Path) -> None:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    vocab = specials + chars + ["##" + c for c in chars] + sorted(set(WORDS))
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")


def build_tiny_bert(directory: Path, seed: int = 0, hidden: int = 32) -> Path:
    """Save a 2-layer random BERT and a small word-piece tokenizer to ``directory``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    _write_vocab(directory / "vocab.txt")
    tok = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    # 4 layers: deep enough for the router's default feature layers (-4, -2)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """Directory of a tiny random BERT (usable as ``--base``)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def other_tiny_base(tmp_path_factory) -> Path:
    """Same architecture, other random weights: another fingerprint."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-2"), seed=1)


def make_toy_rows(n_per_class: int = 30, seed: int = 0) -> list[dict]:
    """Separable 3-topic texts built from the tiny vocabulary."""
    import random

    rng = random.Random(seed)
    topics = {
        "sport": "sport match team goal win player game season cup league coach score".split(),
        "business": "business market bank shares profit company economy price sales growth".split(),
        "tech": "tech computer phone software internet digital data users online mobile".split(),
    }
    filler = "the a of to and in is it for on with".split()
    rows = []
    for label, words in topics.items():
        for i in range(n_per_class):
            text = " ".join(rng.choice(words if rng.random() < 0.6 else filler) for _ in range(12))
            rows.append({"text": f"{text} {i}", "label": label})
    rng.shuffle(rows)
    return rows


@pytest.fixture
def toy_csv(tmp_path) -> Path:
    import csv

    path = tmp_path / "toy.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(make_toy_rows())
    return path
