"""Continual metrics on small hand-made accuracy matrices, values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adaptreg.continual import metrics as M

N = None
# 3 tasks; R[i][j] = accuracy on task j after step i.
R3 = [
    [0.9, N, N],
    [0.7, 0.8, N],
    [0.6, 0.7, 0.95],
]


def close(a, b):
    return a is not None and math.isclose(a, b, abs_tol=1e-12)


def test_acc_is_mean_of_last_row():
    assert close(M.average_accuracy(R3), (0.6 + 0.7 + 0.95) / 3)
    assert close(M.average_accuracy(R3, step=0), 0.9)
    assert close(M.average_accuracy(R3, step=1), 0.75)


def test_bwt_gem():
    # ((0.6 - 0.9) + (0.7 - 0.8)) / 2 = -0.2
    assert close(M.backward_transfer(R3), -0.2)
    assert close(M.backward_transfer(R3, step=1), 0.7 - 0.9)
    assert M.backward_transfer(R3, step=0) is None  # nothing learnt before: undefined, not 0.0


def test_forgetting_chaudhry_uses_best_past_accuracy():
    R = [
        [0.5, N, N],
        [0.8, 0.6, N],  # task 0 improved after step 1 (positive backward transfer)
        [0.7, 0.4, 0.9],
    ]
    # task 0: max(0.5, 0.8) - 0.7 = 0.1 ; task 1: 0.6 - 0.4 = 0.2  -> 0.15
    assert close(M.forgetting(R), 0.15)
    # BWT differs: ((0.7 - 0.5) + (0.4 - 0.6)) / 2 = 0.0
    assert close(M.backward_transfer(R), 0.0)
    assert M.forgetting(R, step=0) is None


def test_curves():
    assert M.accuracy_curve(R3) == pytest.approx([0.9, 0.75, 0.75])
    f = M.forgetting_curve(R3)
    assert f[0] is None and f[1] == pytest.approx(0.2) and f[2] == pytest.approx(0.2)  # (0.3 + 0.1) / 2
    b = M.bwt_curve(R3)
    assert b[0] is None and b[1] == pytest.approx(-0.2) and b[2] == pytest.approx(-0.2)


def test_fwt_gem_against_probe_and_probe_gain():
    R = [
        [0.9, 0.55, 0.40],  # a strategy that can answer unseen tasks
        [0.8, 0.85, 0.50],
        [0.7, 0.80, 0.90],
    ]
    b = [0.85, 0.5, 0.6]
    # FWT = ((0.55 - 0.5) + (0.50 - 0.6)) / 2 = -0.025
    assert close(M.forward_transfer(R, b), -0.025)
    # probe gain = ((0.9-0.85) + (0.85-0.5) + (0.9-0.6)) / 3 = 0.7 / 3
    assert close(M.probe_gain(R, b), 0.7 / 3)


def test_fwt_undefined_without_pre_task_entries_or_baseline():
    assert M.forward_transfer(R3, [0.5, 0.5, 0.5]) is None
    assert M.forward_transfer(R3, None) is None
    assert M.probe_gain(R3, None) is None


def test_partial_rows_and_nan_are_undefined_not_zero():
    # joint measured only on the last row
    R = [[N, N, N], [N, N, N], [0.9, 0.8, 0.7]]
    assert close(M.average_accuracy(R), 0.8)
    assert M.backward_transfer(R) is None
    assert M.forgetting(R) is None
    assert M.accuracy_curve(R) == [None, None, pytest.approx(0.8)]
    A = np.array([[0.9, np.nan], [0.8, 0.7]])
    assert close(M.backward_transfer(A), -0.1)


def test_summary_and_json_roundtrip():
    s = M.summarize(R3, [0.8, 0.8, 0.8])
    assert set(s) >= {"acc", "bwt", "forgetting", "fwt", "probe_gain", "acc_curve", "forgetting_curve", "final_row"}
    assert s["final_row"] == [0.6, 0.7, 0.95]
    assert M.to_jsonable(R3)[0] == [0.9, None, None]
    assert s["fwt"] is None


def test_empty_and_bad_shapes():
    assert M.average_accuracy([]) is None
    with pytest.raises(ValueError):
        M.as_matrix([[1.0], [1.0]])
