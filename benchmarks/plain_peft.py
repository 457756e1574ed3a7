"""A plain PEFT LoRA classifier, written by hand the way the PEFT docs show it: the baseline adaptreg is compared against.

usage: python benchmarks/plain_peft.py --task NAME [--per-class 300] [--epochs 4] [--max-length 128]
                                       [--batch-size 16] [--lr 1e-3] [--seed 0] [--whole-test] [--json out.json]

No adaptreg code takes part in training or evaluation: the model is transformers' AutoModel
(BertModel, no pooling layer) with a PEFT LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
target_modules=["query", "value"]) on every layer, a torch.nn.Linear head on the mask-weighted mean of
the last hidden states, AdamW (weight_decay=0.01, constant learning rate) over the LoRA weights and
the head, shuffled batches tokenized with dynamic padding, cross-entropy, exactly --epochs epochs (no
early stopping), then accuracy on the test split. With --whole-test, also on the catalog's whole test
split (the capped test split is a subset of it), after wall_seconds is taken. Balanced accuracy (the
mean of the per-class recalls) is reported beside accuracy: the capped split has the capped training
rows' class mix, the whole split the dataset's own.

adaptreg is imported for two look-ups only, so that both sides see the same inputs:
``adaptreg.data.tasks.load_task(NAME, max_per_class=N)`` for the same train/test splits (seed 0) and
``adaptreg.base.resolve_base("minilm").path`` for the local model directory (all-MiniLM-L6-v2).

One JSON object goes to stdout (wall_seconds counts from process start, before the heavy imports);
progress goes to stderr.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, help="catalog task name (e.g. bbc-news, spam)")
    ap.add_argument("--per-class", type=int, default=300, help="training examples per class (cap)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--whole-test", action="store_true",
                    help="also score the catalog's whole test split (not only the capped one)")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)

    # The only adaptreg use: find the same data splits and the local model directory.
    from adaptreg.base import resolve_base
    from adaptreg.data.tasks import load_task

    td = load_task(args.task, max_per_class=args.per_class)
    model_path = resolve_base("minilm").path
    n_labels = len(td.labels)
    train_texts, train_y = list(td.train.texts), list(td.train.y)
    test_texts, test_y = list(td.test.texts), list(td.test.y)
    log(f"{args.task}: {len(train_texts)} train / {len(test_texts)} test, {n_labels} labels")

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModel.from_pretrained(model_path, add_pooling_layer=False)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"])
    model = get_peft_model(base, config)
    head = torch.nn.Linear(base.config.hidden_size, n_labels)
    model.to(device)
    head.to(device)

    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    def logits_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(**batch)
        return head(mean_pool(out.last_hidden_state, batch["attention_mask"]))

    t_train = time.perf_counter()
    order = list(range(len(train_texts)))
    for epoch in range(args.epochs):
        model.train()
        head.train()
        random.shuffle(order)
        total, steps = 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            batch = encode([train_texts[j] for j in idx])
            labels = torch.tensor([train_y[j] for j in idx], device=device)
            loss = loss_fn(logits_of(batch), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        log(f"epoch {epoch + 1}/{args.epochs}: train loss {total / max(steps, 1):.4f}")
    train_seconds = time.perf_counter() - t_train

    model.eval()
    head.eval()

    def accuracy(texts: list[str], ys: list[int]) -> tuple[float, float]:
        """Accuracy and balanced accuracy (the mean of the per-class recalls)."""
        right, seen = [0] * n_labels, [0] * n_labels
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                pred = logits_of(encode(texts[i:i + 64])).argmax(-1).tolist()
                for p, y in zip(pred, ys[i:i + 64]):
                    right[y] += int(p == y)
                    seen[y] += 1
        if not texts:
            return float("nan"), float("nan")
        return sum(right) / len(texts), sum(r / s for r, s in zip(right, seen) if s) / sum(1 for s in seen if s)

    acc, balanced = accuracy(test_texts, test_y)
    log(f"test accuracy {acc:.4f}")

    out = {
        "task": args.task, "per_class": args.per_class, "epochs": args.epochs, "max_length": args.max_length,
        "batch_size": args.batch_size, "lr": args.lr, "n_train": len(train_texts), "n_test": len(test_texts),
        "test_accuracy": acc, "test_balanced_accuracy": balanced, "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - _T0,
    }
    if args.whole_test:
        whole = load_task(args.task)
        if whole.labels != td.labels:
            raise SystemExit(f"{args.task}: the whole task's labels differ from the capped task's")
        out["whole_test_accuracy"], out["whole_test_balanced_accuracy"] = accuracy(list(whole.test.texts), list(whole.test.y))
        out["n_test_whole"] = len(whole.test.texts)
        log(f"whole test accuracy {out['whole_test_accuracy']:.4f} ({out['n_test_whole']} rows)")
    print(json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
