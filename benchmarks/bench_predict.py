"""Routing, abstention, merge retention and prediction throughput on real catalog tasks.

usage: python benchmarks/bench_predict.py [--base minilm] [--per-class 60] [--epochs 2] [--max-length 128]
                                          [--rank 8] [--rows 240] [--threads 2] [--rounds 3] [--skip-merge] [--quick]
                                          [--workdir .bench/predict] [--json results.json]

Onboards one LoRA adapter per catalog task (cached in --workdir), then measures on the tasks'
test splits: routing accuracy, false abstention, abstention on out-of-distribution text (digits,
random characters, German), TIES and linear merge retention, and throughput (examples/s) of
single-task, mixed (task ids given), routed-mixed and merged-export prediction on the same rows.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

TASKS = {"news": "bbc-news", "spam": "spam", "movies": "movie-reviews", "tweets": "tweet-sentiment"}

GERMAN = (
    "Der Hund schläft im Garten und träumt von einem langen Spaziergang am Fluss.",
    "Morgen fahren wir mit dem Zug nach München, um meine Großeltern zu besuchen.",
    "Die Regierung hat gestern neue Regeln für den Wohnungsbau beschlossen.",
    "Ich habe heute keine Zeit, weil ich noch die Steuererklärung machen muss.",
    "Das Wetter ist seit Tagen grau, und im Keller steht schon wieder Wasser.",
    "Unsere Nachbarin backt jeden Sonntag einen Apfelkuchen für die ganze Straße.",
    "Bitte schließen Sie das Fenster, bevor Sie das Büro verlassen.",
    "Die Kinder spielen auf dem Hof Fußball, bis es dunkel wird.",
    "Nach dem Umzug mussten wir alle Möbel neu zusammenbauen.",
    "Im Herbst sammeln wir Pilze im Wald hinter dem Dorf.",
)
GERMAN_WORDS = ("und der die das nicht ich sie wir Haus Baum Straße morgen gestern schnell langsam "
                "Kuchen Fenster Wasser Zug fahren gehen sehen schreiben lesen immer wieder heute Garten "
                "Kinder Arbeit Stadt Dorf Wald Fluss Himmel Brot Milch Schule Lehrer freundlich").split()


def ood_sets(n: int, seed: int = 0) -> dict[str, list[str]]:
    rng = random.Random(seed)
    digits = [" ".join("".join(rng.choice(string.digits) for _ in range(rng.randint(2, 8)))
                       for _ in range(rng.randint(4, 15))) for _ in range(n)]
    chars = ["".join(rng.choice(string.ascii_letters + string.punctuation + "     ") for _ in range(rng.randint(30, 200)))
             for _ in range(n)]
    german = list(GERMAN) + [" ".join(rng.choice(GERMAN_WORDS) for _ in range(rng.randint(6, 20))).capitalize() + "."
                             for _ in range(n - len(GERMAN))]
    return {"digits": digits, "random_chars": chars, "german": german}


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def best_time(fn, repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="minilm")
    ap.add_argument("--per-class", type=int, default=60, help="catalog NAME@N: examples per class")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--rows", type=int, default=240, help="rows for the throughput comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    ap.add_argument("--skip-merge", action="store_true")
    ap.add_argument("--quick", action="store_true", help="throughput only: no routing evaluation, no merges")
    ap.add_argument("--workdir", default=".bench/predict")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from adaptreg.base import load_base
    from adaptreg.compose.merge import ExportedModel, export_merged, merge_adapters
    from adaptreg.compose.predict import Predictor
    from adaptreg.compose.router import Router, abstention_rate, routing_report
    from adaptreg.config import LoraSettings, TrainSettings
    from adaptreg.data.tasks import load_task
    from adaptreg.train import onboard

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    lb = load_base(args.base)
    out: dict = {"args": vars(args), "torch_threads": torch.get_num_threads()}
    tds, ads = {}, {}
    for name, cat in TASKS.items():
        spec = f"{cat}@{args.per_class}"
        tds[name] = load_task(spec, seed=0)
        ad = work / f"{name}-r{args.rank}-e{args.epochs}-l{args.max_length}-n{args.per_class}"
        if not (ad / "manifest.json").is_file():
            t = time.perf_counter()
            onboard(name, tds[name], base=lb, lora=LoraSettings(rank=args.rank),
                    train=TrainSettings(epochs=args.epochs, max_length=args.max_length, patience=0),
                    output=str(ad), register=False, probe=False, progress=False)
            print(f"onboarded {name} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        ads[name] = ad
    out["adapters"] = {n: json.loads((p / "manifest.json").read_text())["metrics"]["test_accuracy"] for n, p in ads.items()}

    # ---- routing
    routing = {}
    default_length = Router().max_length  # the predictor below routes with the default router
    for ml in (default_length,) if args.quick else sorted({64, args.max_length, default_length}):
        router = Router(max_length=ml)
        router.fit({n: router.features(lb, td.train.texts) for n, td in tds.items()},
                   {n: td.train.y for n, td in tds.items()})
        if ml == default_length:
            router_default = router
        if args.quick:
            continue
        test_feats = {n: router.features(lb, td.test.texts) for n, td in tds.items()}
        rep = routing_report(router, test_feats)
        no_abstain = routing_report(router, test_feats, threshold=1e9)
        ood_feats = {k: router.features(lb, v) for k, v in ood_sets(100).items()}
        ood = {k: abstention_rate(router, f) for k, f in ood_feats.items()}
        routing[ml] = {"accuracy": rep["accuracy"], "false_abstention": rep["abstained"],
                       "accuracy_without_abstention": no_abstain["accuracy"],
                       "per_task": {n: v["accuracy"] for n, v in rep["per_task"].items()}, "ood_abstention": ood}
        # threshold sweep: in-distribution abstention vs OOD abstention
        sweep = {}
        for thr in (1.0, 1.5, 2.0, 3.0):
            sweep[thr] = {"false_abstention": routing_report(router, test_feats, thr)["abstained"],
                          **{k: abstention_rate(router, f, thr) for k, f in ood_feats.items()}}
        routing[ml]["sweep"] = sweep
    out["routing"] = routing

    # ---- merging
    merges = {}
    for method in () if (args.skip_merge or args.quick) else ("ties", "linear"):
        res = merge_adapters({n: str(p) for n, p in ads.items()}, name=f"merged-{method}", method=method, base=lb,
                             register=False, output=work / f"merged-{method}", overwrite=True, data=tds)
        merges[method] = {n: r["retention"] for n, r in res.retention.items()}
        merges[method]["detail"] = res.retention
    out["merge_retention"] = merges

    # ---- throughput on the same rows
    rng = random.Random(0)
    rows = [(n, x) for n, td in tds.items() for x in td.test.texts]
    rng.shuffle(rows)
    rows = rows[: args.rows]
    texts, true_tasks = [x for _, x in rows], [n for n, _ in rows]
    pred = Predictor.from_artifacts(lb, {n: str(p) for n, p in ads.items()}, router=router_default)
    one = next(iter(ads))
    pred.predict(texts[:8], task=one)  # warm-up
    exp = export_merged(ads[one], work / f"export-{one}", base=lb, overwrite=True)
    em = ExportedModel(exp)
    em.predict(texts[:8])
    modes = {
        "single_task": lambda: pred.predict(texts, task=one),
        "mixed_task_ids_given": lambda: pred.predict(texts, task=true_tasks),
        "mixed_ungrouped_task_ids_given": lambda: pred.predict(texts, task=true_tasks, group_tasks=False),
        "routed_mixed": lambda: pred.predict(texts),
        "routed_mixed_no_abstention": lambda: pred.predict(texts, threshold=1e9),
        "routing_forward_only": lambda: pred.route(texts),
        "merged_export_single_task": lambda: em.predict(texts),
    }
    # Interleaved rounds, median per mode: a shared machine's load drifts between runs.
    seconds = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m, fn in modes.items():
            t = time.perf_counter()
            fn()
            seconds[m].append(time.perf_counter() - t)
    tp = {m: rate(len(texts), sorted(v)[len(v) // 2]) for m, v in seconds.items()}
    tp["routed_over_single"] = tp["routed_mixed_no_abstention"] / tp["single_task"]
    tp["mixed_over_single"] = tp["mixed_task_ids_given"] / tp["single_task"]
    tp["export_over_single"] = tp["merged_export_single_task"] / tp["single_task"]
    out["throughput_examples_per_s"] = tp
    routed_pred = pred.predict(texts)
    out["end_to_end_routing_accuracy"] = sum(r["task"] == t for r, t in zip(routed_pred, true_tasks)) / len(texts)
    text = json.dumps(out, indent=2, sort_keys=True, default=str)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
