"""Router: nearest class mean under a shrunk pooled (+ own) covariance, incremental, abstaining, pickle-free."""

from __future__ import annotations

import numpy as np
import pytest

from adaptreg.compose.router import UNKNOWN, Router, abstention_rate, routing_report
from adaptreg.errors import ConfigError, DataError, IntegrityError, NotFittedError

DIM = 24


def _task(rng, centre, n=150, n_classes=3):
    y = rng.integers(0, n_classes, n)
    x = centre + 0.35 * rng.normal(size=(n, DIM)) + 0.25 * np.eye(DIM)[y]
    return x, y


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = {t: rng.normal(size=DIM) for t in ("news", "reviews", "tickets")}
    train = {t: _task(rng, c) for t, c in centres.items()}
    test = {t: _task(rng, c) for t, c in centres.items()}
    return train, test


def _fit_all(train, **kw):
    return Router(surface=0, **kw).fit({t: v[0] for t, v in train.items()}, {t: v[1] for t, v in train.items()})


def test_routes_held_out_rows_to_their_task(data):
    train, test = data
    r = _fit_all(train)
    rep = routing_report(r, {t: v[0] for t, v in test.items()})
    assert rep["accuracy"] > 0.9 and rep["n"] == 450
    assert set(rep["per_task"]) == set(train)
    assert rep["abstained"] < 0.08  # calibrated at the 99th percentile of training distances


def test_adding_tasks_one_by_one_equals_fitting_all_at_once(data):
    train, test = data
    once = _fit_all(train)
    step = Router(surface=0)
    for t, (x, y) in train.items():
        step.add_task(t, x, y)
    x = np.vstack([v[0] for v in test.values()])
    a, sa = once.route(x)
    b, sb = step.route(x)
    assert a == b
    np.testing.assert_allclose(sa, sb, rtol=1e-10)
    np.testing.assert_array_equal(once.means_, step.means_)


def test_add_task_keeps_only_compact_statistics(data):
    train, _ = data
    r = _fit_all(train)
    n_classes = sum(len(set(y.tolist())) for _, y in train.values())
    assert r.means_.shape == (n_classes, DIM)
    blocks = len(r.feature_layers)  # one block of features per frozen-base layer
    half = DIM // blocks
    assert r.scatters_.shape == (len(train), blocks, half, half)  # per task and block, independent of its row count
    assert r.counts_.sum() == sum(len(y) for _, y in train.values())


def test_abstains_far_from_every_task(data):
    train, _ = data
    r = _fit_all(train)
    rng = np.random.default_rng(5)
    far = rng.normal(size=(100, DIM)) * 3 + 10
    assert abstention_rate(r, far) == 1.0
    routed, scores = r.route(far)
    assert set(routed) == {UNKNOWN} and (scores > 1).all()
    # user-set thresholds: huge = never abstain
    assert UNKNOWN not in Router(surface=0, threshold=1e9).fit({t: v[0] for t, v in train.items()}).route(far)[0]
    assert UNKNOWN not in r.route(far, threshold=1e9)[0]


def test_restricting_candidates(data):
    train, test = data
    r = _fit_all(train)
    routed, _ = r.route(test["news"][0], tasks=["reviews", "tickets"], threshold=1e9)
    assert set(routed) <= {"reviews", "tickets"}
    with pytest.raises(ConfigError, match="does not know"):
        r.route(test["news"][0], tasks=["nope"])


def test_task_without_labels_is_one_class(data):
    train, test = data
    r = Router(surface=0).fit({t: v[0] for t, v in train.items()})
    assert len(r.means_) == len(train)
    assert routing_report(r, {t: v[0] for t, v in test.items()})["accuracy"] > 0.85


def test_save_load_round_trip_without_pickle(data, tmp_path):
    train, test = data
    r = _fit_all(train, threshold=1.3, shrinkage=0.2, max_length=48)
    r.save(tmp_path / "router")
    assert sorted(p.name for p in (tmp_path / "router").iterdir()) == ["router.json", "router.safetensors"]
    back = Router.load(tmp_path / "router")
    assert back.get_params() == r.get_params() and back.tasks_ == r.tasks_
    x = np.vstack([v[0] for v in test.values()])
    assert back.route(x)[0] == r.route(x)[0]
    np.testing.assert_allclose(back.route(x)[1], r.route(x)[1])
    # the loaded router keeps learning
    rng = np.random.default_rng(9)
    back.add_task("extra", *_task(rng, rng.normal(size=DIM)))
    assert back.tasks_[-1] == "extra"
    # tampering is detected
    p = tmp_path / "router" / "router.safetensors"
    p.write_bytes(p.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IntegrityError, match="sha256"):
        Router.load(tmp_path / "router")


def test_errors_name_the_problem(data):
    train, _ = data
    with pytest.raises(NotFittedError, match="not fitted yet"):
        Router(surface=0).route(np.zeros((1, DIM)))
    r = _fit_all(train)
    with pytest.raises(DataError, match="dimensions"):
        r.add_task("bad", np.zeros((5, DIM + 1)))
    with pytest.raises(ConfigError, match="already routed"):
        r.add_task("news", *train["news"])
    with pytest.raises(ConfigError, match="quantile"):
        Router(surface=0, quantile=1.5).add_task("x", *train["news"])
    with pytest.raises(DataError, match="NaN"):
        Router(surface=0).add_task("x", np.full((3, DIM), np.nan))


def test_replace_task_equals_fresh_fit():
    rng = np.random.default_rng(7)
    a, b, b2 = (rng.normal(size=(40, 6)) + k for k in (0, 3, 5))
    r = Router(surface=0).add_task("a", a).add_task("b", b).add_task("b", b2, replace=True)
    fresh = Router(surface=0).add_task("a", a).add_task("b", b2)
    assert r.tasks_ == fresh.tasks_
    np.testing.assert_allclose(r.means_, fresh.means_)
    np.testing.assert_allclose(r.scatters_, fresh.scatters_)
    with pytest.raises(ConfigError, match="already routed"):
        fresh.add_task("a", a)


def test_threshold_one_refuses_about_the_quantile_of_held_out_rows():
    """Cross-fitted calibration: at the default threshold (1.0 = the 0.99 quantile of held-out
    distances) about 1 % of fresh in-distribution rows abstain, not the several % that in-sample
    (too small) distances in many dimensions would give."""
    rng = np.random.default_rng(3)
    centres = {t: rng.normal(size=DIM) for t in ("a", "b", "c")}
    r = Router(surface=0)
    for t, c in centres.items():
        r.add_task(t, *_task(rng, c, n=200))
    fresh = np.vstack([_task(rng, c, n=2000)[0] for c in centres.values()])
    rate = abstention_rate(r, fresh)
    assert 0.002 < rate < 0.03, rate
    assert abstention_rate(r, fresh, threshold=0.8) > rate  # a lower threshold refuses more


def test_features_must_split_into_one_block_per_layer():
    with pytest.raises(DataError, match="not a multiple"):
        Router(surface=0, layers=(-4, -2)).add_task("x", np.ones((5, 7)))
    with pytest.raises(ConfigError, match="layers is empty"):
        Router(surface=0, layers=()).add_task("x", np.ones((5, 8)))


def test_router_of_an_older_schema_is_refused_with_the_fix(data, tmp_path):
    import json

    train, _ = data
    _fit_all(train).save(tmp_path / "r")
    meta = json.loads((tmp_path / "r" / "router.json").read_text())
    meta["schema_version"] = 1
    (tmp_path / "r" / "router.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="route add TASK... --rebuild"):
        Router.load(tmp_path / "r")


def test_task_distances_take_each_tasks_nearest_class():
    """The vectorised per-task minimum equals the minimum over each task's classes, checked by brute force
    (one shared covariance: with each task's own, distances are per task by construction)."""
    rng = np.random.default_rng(3)
    r = Router(surface=0, layers=(-1,), own_covariance=0.0)
    for k in range(5):
        r.add_task(f"t{k}", rng.normal(size=(40, 12)) + k, rng.integers(0, 3 + k % 2, 40))
    x = rng.normal(size=(30, 12)) + 2
    w, _ = r._state()
    d2 = r._d2(r._prep(x), w, r.means_)
    want = np.stack([d2[:, [i for i, t in enumerate(r.class_tasks_) if t == name]].min(1) for name in r.tasks_], 1)
    assert np.allclose(r.task_distances(x), want)
    assert r.task_distances(np.zeros((0, 12))).shape == (0, 5)
    # entries given out of order: columns follow the entries as given
    w, _ = r._state((3, 1))
    d2 = r._d2(r._prep(x), w, r.means_)
    want = np.stack([d2[:, [i for i, t in enumerate(r.class_tasks_) if t == f"t{k}"]].min(1) for k in (3, 1)], 1)
    assert np.allclose(r.task_distances(x, (3, 1)), want)


def test_a_second_version_on_the_same_rows_routes_like_the_first():
    """Two versions of a task fitted on the same rows. Served with the other tasks, each routes
    like a router that never saw the other version: routing pools the covariance over the served
    entries only (before, the twin's rows counted twice, so the served version's expected
    held-out distance came out too small and it refused most of its own task's rows), and the
    second version's calibration leaves its twin out of the pooled "other tasks"."""
    rng = np.random.default_rng(5)
    data = {t: (rng.normal(size=(60, 16)) + 3 * k, rng.integers(0, 3, 60)) for k, t in enumerate(("a", "b"))}
    both = Router(surface=0, layers=(-1,))
    both.add_task("a@1", *data["a"])
    both.add_task("b@1", *data["b"])
    both.add_task("a@2", *data["a"])  # the same rows again, as re-onboarding on the same data does
    alone = Router(surface=0, layers=(-1,))
    alone.add_task("a@1", *data["a"])
    alone.add_task("b@1", *data["b"])
    x = np.concatenate([rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 3])
    r1, s1 = both.route(x, tasks=["a@1", "b@1"])
    ra, sa = alone.route(x)
    assert r1 == ra and np.allclose(s1, sa)  # the unserved twin changes nothing
    # a@2 was calibrated after b@1 (a@1 before it): the same up to that order
    assert abs(both.ratios_[2] / both.ratios_[0] - 1) < 0.1
    r2, s2 = both.route(x, tasks=["a@2", "b@1"])
    assert [t.replace("@2", "@1") for t in r2] == ra and np.allclose(s2, sa, rtol=0.1)


# -- the text-surface block -------------------------------------------------------------------

def test_surface_features_read_the_form_of_a_text():
    from adaptreg.compose.router import SURFACE_DIMS, surface_features

    f = surface_features(["what is my balance", "What is my balance?", "Line one.\nLine two.\nLine three.", ""])
    assert f.shape == (4, SURFACE_DIMS) and np.isfinite(f).all()
    assert f[1, 1] > f[0, 1]  # a share of capitals
    assert f[2, 4] > f[0, 4]  # line breaks
    assert list(f[1, 7:10]) == [1.0, 1.0, 0.0] and list(f[0, 7:10]) == [0.0, 0.0, 0.0] and f[2, 9] == 1.0


def test_surface_block_separates_tasks_whose_embeddings_agree():
    """Two tasks with the same layer-feature distribution, one typed in lower case without
    punctuation and one in sentence case with a question mark: only the surface block tells them apart."""
    rng = np.random.default_rng(5)
    words = ["balance", "card", "transfer", "pin", "account", "limit", "fee", "refund"]
    def texts(n, styled):
        out = []
        for _ in range(n):
            s = " ".join(rng.choice(words, rng.integers(3, 8)))
            out.append(s[0].upper() + s[1:] + "?" if styled else s)
        return out
    train = {"plain": texts(200, False), "styled": texts(200, True)}
    test = {"plain": texts(100, False), "styled": texts(100, True)}
    emb = lambda n: rng.normal(size=(n, 16))  # noqa: E731  the same distribution for both tasks
    accs = {}
    for surface in (0.0, 1.0):
        r = Router(surface=surface)
        for t, tx in train.items():
            r.add_task(t, r.with_surface(emb(len(tx)), tx))
        rep = routing_report(r, {t: r.with_surface(emb(len(tx)), tx) for t, tx in test.items()}, threshold=1e9)
        accs[surface] = rep["accuracy"]
    assert accs[0.0] < 0.7 and accs[1.0] > 0.99


def test_features_without_the_surface_block_are_refused_with_the_fix():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="text-surface block.*Router.features"):
        Router().add_task("x", rng.normal(size=(20, 24)))
    with pytest.raises(DataError, match="feature rows for"):
        Router().with_surface(np.zeros((2, 4)), ["one text"])
    with pytest.raises(ConfigError, match="surface"):
        Router(surface=-1).add_task("x", rng.normal(size=(20, 24)))


def test_surface_router_round_trips_and_older_routers_load_without_it(tmp_path):
    import json

    rng = np.random.default_rng(1)
    tx = [f"Text number {i}{'?' if i % 2 else '.'}" for i in range(30)]
    r = Router()
    r.add_task("a", r.with_surface(rng.normal(size=(30, 8)), tx), np.arange(30) % 2)
    r.add_task("b", r.with_surface(rng.normal(size=(30, 8)) + 1, [t.lower() for t in tx]))
    back = Router.load(r.save(tmp_path / "r"))
    x = r.with_surface(rng.normal(size=(10, 8)), tx[:10])
    assert back.surface == r.surface and back.route(x)[0] == r.route(x)[0]
    assert np.allclose(back.route(x)[1], r.route(x)[1])
    old = Router(surface=0).fit({"a": rng.normal(size=(30, 8))})
    d = old.save(tmp_path / "old")
    meta = json.loads((d / "router.json").read_text())
    del meta["params"]["surface"]  # as written before the surface block existed
    (d / "router.json").write_text(json.dumps(meta))
    assert Router.load(d).surface == 0.0


def test_surface_version_2_reads_hashtags_and_header_fields():
    from adaptreg.compose.router import SURFACE_DIMS_BY_VERSION, surface_features

    texts = ["Subject: Re: the meeting\nSee you there.", "so tired #mondays #work", "Plain text here."]
    f2 = surface_features(texts, 2)
    assert f2.shape == (3, SURFACE_DIMS_BY_VERSION[2]) and np.isfinite(f2).all()
    assert np.array_equal(f2[:, :10], surface_features(texts, 1))  # version 1's columns, unchanged
    assert f2[1, 10] > f2[0, 10] == f2[2, 10]  # a share of "#"
    assert list(f2[:, 11]) == [1.0, 0.0, 0.0]  # starts with a header field
    with pytest.raises(ConfigError, match="surface_version"):
        surface_features(texts, 3)
    with pytest.raises(ConfigError, match="surface_version"):
        Router(surface_version=7).add_task("x", np.ones((4, 8)))


def test_a_version_1_surface_router_loads_and_featurizes_as_it_was_fitted(tmp_path):
    """A router saved before surface versions existed (ten statistics, no ``surface_version`` in
    its parameters) loads as version 1: its features keep ten surface columns and it routes as
    before; a new router reads twelve."""
    import json

    rng = np.random.default_rng(2)
    tx = [f"Subject: note {i}" if i % 2 else f"#tag text {i}" for i in range(40)]
    r1 = Router(surface_version=1)
    r1.add_task("a", r1.with_surface(rng.normal(size=(40, 8)), tx), np.arange(40) % 2)
    r1.add_task("b", r1.with_surface(rng.normal(size=(40, 8)) + 1, [t.lower() for t in tx]))
    d = r1.save(tmp_path / "r1")
    meta = json.loads((d / "router.json").read_text())
    del meta["params"]["surface_version"]  # as written before versions existed
    (d / "router.json").write_text(json.dumps(meta))
    back = Router.load(d)
    assert back.surface_version == 1 and back.feature_key() != Router().feature_key()
    x = back.with_surface(rng.normal(size=(6, 8)), tx[:6])
    assert x.shape[1] == 8 + 10 and back.route(x)[0] == r1.route(x)[0]
    assert Router().with_surface(rng.normal(size=(6, 8)), tx[:6]).shape[1] == 8 + 12


# -- regularised discriminant analysis: each task's own covariance ------------------------------

def test_own_covariance_distances_equal_the_blended_mahalanobis_distance():
    """With ``own_covariance`` a, a task's distances use (1 - a) * pooled + a * its own within-class
    covariance, checked against a direct inverse (no shrinkage, no normalisation: nothing else moves)."""
    rng = np.random.default_rng(11)
    data = [(rng.normal(size=(80, 6)) * (1 + k) + 2 * k, rng.integers(0, 2 + k, 80)) for k in range(3)]
    r = Router(surface=0, layers=(-1,), normalize=False, shrinkage=0.0, own_covariance=0.3, log_det=0.0)
    for k, (x, y) in enumerate(data):
        r.add_task(f"t{k}", x, y)
    scat = []
    for x, y in data:
        scat.append(sum((x[y == c] - x[y == c].mean(0)).T @ (x[y == c] - x[y == c].mean(0)) for c in np.unique(y)))
    dof = sum(len(x) - len(np.unique(y)) for x, y in data)
    pooled = sum(scat) / dof
    q = rng.normal(size=(25, 6)) * 2 + 2
    want = np.empty((len(q), 3))
    for k, (x, y) in enumerate(data):
        own = scat[k] / (len(x) - len(np.unique(y)))
        inv = np.linalg.inv(0.7 * pooled + 0.3 * own)
        diffs = q[:, None] - np.stack([x[y == c].mean(0) for c in np.unique(y)])[None]
        want[:, k] = np.einsum("rcd,de,rce->rc", diffs, inv, diffs).min(1)
    np.testing.assert_allclose(r.task_distances(q), want, rtol=1e-6)


def test_own_covariance_and_log_det_separate_tasks_that_differ_in_spread():
    """Two tasks around the same centre, one tight and one broad: one shared covariance (LDA)
    cannot tell them apart; each task's own covariance and its volume term (QDA at 1, 1) can
    (unnormalised features: on the unit sphere the two would be the same directions)."""
    rng = np.random.default_rng(12)
    tight = lambda n: 0.3 * rng.normal(size=(n, 8))  # noqa: E731
    broad = lambda n: 2.0 * rng.normal(size=(n, 8))  # noqa: E731
    test = np.vstack([tight(300), broad(300)])
    truth = ["tight"] * 300 + ["broad"] * 300
    acc = {}
    for a, ld in ((0.0, 0.0), (1.0, 1.0)):
        r = Router(surface=0, layers=(-1,), normalize=False, threshold=float("inf"), own_covariance=a, log_det=ld)
        r.add_task("tight", tight(300)).add_task("broad", broad(300))
        acc[a] = np.mean([p == t for p, t in zip(r.route(test)[0], truth)])
    assert acc[1.0] > 0.9 and acc[1.0] > acc[0.0] + 0.2, acc


def test_own_covariance_keeps_the_calibration_and_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    centres = {t: rng.normal(size=DIM) for t in ("a", "b", "c")}
    r = Router(surface=0, own_covariance=0.3, log_det=0.5)
    for t, c in centres.items():
        r.add_task(t, *_task(rng, c, n=200))
    fresh = np.vstack([_task(rng, c, n=2000)[0] for c in centres.values()])
    assert 0.002 < abstention_rate(r, fresh) < 0.03
    back = Router.load(r.save(tmp_path / "router"))
    assert back.get_params() == r.get_params()
    assert back.route(fresh[:200])[0] == r.route(fresh[:200])[0]
    with pytest.raises(ConfigError, match="own_covariance"):
        Router(surface=0, own_covariance=1.5).add_task("x", *_task(rng, centres["a"]))


def test_route_measures_only_the_nearest_tasks_and_agrees_with_the_full_rule():
    """``route`` measures each row under the own covariances of its ``ROUTE_CANDIDATES`` nearest
    tasks only: with that many tasks or fewer it is the full rule exactly, and with more it picks
    the task the full rule picks for (nearly) every row."""
    from adaptreg.compose import router as router_mod

    rng = np.random.default_rng(13)
    r = Router(surface=0, layers=(-1,), threshold=float("inf"), own_covariance=0.2, log_det=0.5)
    centres = rng.normal(size=(9, 10))
    for k, c in enumerate(centres):
        r.add_task(f"t{k}", c + (0.5 + 0.1 * k) * rng.normal(size=(60, 10)), rng.integers(0, 3, 60))
    x = centres[rng.integers(0, 9, 600)] + 0.8 * rng.normal(size=(600, 10))
    def choosing(idx):  # every task's choosing score under its own covariance: the full rule
        return r._distances(r._prep(x), idx, choose=True)[1] + r._cache[idx][4][None]

    full = choosing(tuple(range(9)))
    want = [r.tasks_[i] for i in full.argmin(1)]
    got = r.route(x)[0]
    assert np.mean([a == b for a, b in zip(got, want)]) > 0.99
    assert router_mod.ROUTE_CANDIDATES < 9
    few = ["t0", "t3", "t5", "t8"][: router_mod.ROUTE_CANDIDATES]
    idx = tuple(sorted(r.tasks_.index(t) for t in few))
    sub = choosing(idx)
    assert r.route(x, tasks=few)[0] == [r.tasks_[idx[i]] for i in sub.argmin(1)]


def test_class_temperature_counts_every_class_of_a_task():
    """A row equally near two classes of task A and a little nearer task B's one class: the nearest
    class mean (temperature 0) picks B; the tempered class mixture (the default) picks A, the
    task whose classes together explain the row, even after A pays its 2 log 2 class prior."""
    rng = np.random.default_rng(21)
    e1, e2 = np.eye(DIM)[0], np.eye(DIM)[1]
    noise = lambda n: rng.normal(size=(n, DIM))  # noqa: E731
    a = np.vstack([4 * e1 + noise(1500), -4 * e1 + noise(1500)])
    ya = np.repeat([0, 1], 1500)
    b = 3.5 * e2 + noise(3000)
    rows = 0.05 * noise(50)
    got = {}
    for t in (0.0, 8.0):
        r = Router(surface=0, normalize=False, threshold=float("inf"), own_covariance=0.0, class_temperature=t)
        r.add_task("A", a, ya).add_task("B", b)
        got[t] = set(r.route(rows)[0])
        d = r.task_distances(rows)
        assert (d[:, 1] < d[:, 0]).all()  # B's mean is the nearest class mean of every row
    assert got == {0.0: {"B"}, 8.0: {"A"}}


def test_tempered_scores_match_the_formula_on_both_paths():
    """The choosing score is -2T log sum_y exp(-d_y / 2T) + 2 log K over the task's classes, the
    same whether computed per task (own covariance) or in one pass (shared covariance)."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(5)
    for own in (0.0, 0.3):
        r = Router(surface=0, threshold=float("inf"), own_covariance=own, class_temperature=3.0)
        for k in range(3):
            r.add_task(f"t{k}", *_task(rng, rng.normal(size=DIM), n=120, n_classes=k + 2))
        x = r._prep(rng.normal(size=(40, DIM)))
        idx = (0, 1, 2)
        dmin, soft = r._distances(x, idx, choose=True)
        w, _, cls_task, per_entry, _, shared = r._entry(idx)
        for j in idx:
            d2 = r._d2(x, per_entry[j] if per_entry else shared, r.means_[cls_task == j])
            assert np.allclose(dmin[:, j], d2.min(1))
            assert np.allclose(soft[:, j], -6.0 * logsumexp(-d2 / 6.0, axis=1) + 2 * np.log(d2.shape[1]))
    with pytest.raises(ConfigError, match="class_temperature"):
        Router(surface=0, class_temperature=-1).add_task("x", *_task(rng, rng.normal(size=DIM)))
