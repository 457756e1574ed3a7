"""Two router versions of one task fitted on the same rows: routing of its test rows now vs the old rule.

usage: python benchmarks/router_twin_versions.py

MiniLM, spam and bbc-news at 150 per class; spam@2 is added on the same training rows as spam@1
(re-onboarding on the same data). The old rule pooled covariance and calibration over every entry
and then picked the served columns; now routing pools over the served entries only.
"""

import numpy as np
from adaptreg.base import load_base
from adaptreg.compose.router import Router, UNKNOWN
from adaptreg.data.tasks import load_task
lb = load_base("minilm")
tds = {n: load_task(n, max_per_class=150) for n in ("spam", "bbc-news")}
r = Router()
F = {n: (r.features(lb, td.train.texts), r.features(lb, td.test.texts)) for n, td in tds.items()}
r.add_task("spam@1", F["spam"][0], tds["spam"].train.y)
r.add_task("bbc@1", F["bbc-news"][0], tds["bbc-news"].train.y)
r.add_task("spam@2", F["spam"][0], tds["spam"].train.y)  # same rows, as re-onboarding on the same data
x = F["spam"][1]
def rate(names, full=False):
    if full:  # the old rule: covariance and calibration pooled over every entry, then columns picked
        d = r.task_distances(x); _, q = r._state()
        cols = [r.tasks_.index(t) for t in names]; d, q = d[:, cols], q[cols]
        best = d.argmin(1); score = d[np.arange(len(d)), best] / q[best]
        routed = [names[b] if s <= r.threshold_ else UNKNOWN for b, s in zip(best, score)]
    else:
        routed, _ = r.route(x, tasks=names)
    return sum(t.startswith("spam") for t in routed) / len(routed), sum(t == UNKNOWN for t in routed) / len(routed)
print("ratios", dict(zip(r.tasks_, np.round(r.ratios_, 3))))
for names in (["spam@1", "bbc@1"], ["spam@2", "bbc@1"]):
    print(names, "now: routed home %.3f unknown %.3f" % rate(names), "| old rule: routed home %.3f unknown %.3f" % rate(names, True))
