"""Metric functions against rankings computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxrec.trainer.metrics import coverage, single_positive_metrics, topk_metrics


def test_single_positive_hand_computed() -> None:
    # user 0: positive at position 0; user 1: position 3; user 2: position 12 (outside top-10)
    m = single_positive_metrics(np.array([0, 3, 12]), np.array([0, 0, 0]), k=10)
    assert m["hr"] == pytest.approx(2 / 3)
    assert m["ndcg"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert m["mrr"] == pytest.approx((1.0 + 1 / 4) / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 30)
    assert m["f1"] == pytest.approx((2 / 11) * 2 / 3)
    assert m["map"] == pytest.approx(m["mrr"])


def test_a_tie_counts_half() -> None:
    # positive tied with one other item at the cut-off: positions 9 or 10, equally likely
    m = single_positive_metrics(np.array([9]), np.array([1]), k=10)
    assert m["hr"] == pytest.approx(0.5)
    assert m["ndcg"] == pytest.approx(0.5 / math.log2(11))
    # all 100 candidates tied: expected HR@10 = 10/100
    m = single_positive_metrics(np.array([0]), np.array([99]), k=10)
    assert m["hr"] == pytest.approx(0.1)


def test_topk_metrics_hand_computed() -> None:
    topk = np.array([[5, 1, 7, 3], [2, 4, 6, 8]])
    relevant = [np.array([1, 3, 9]), np.array([0])]
    m = topk_metrics(topk, relevant, k=4)
    # user 0: hits at ranks 2 and 4; user 1: no hit
    assert m["hr"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx((2 / 4) / 2)
    assert m["recall"] == pytest.approx((2 / 3) / 2)
    p, r = 0.5, 2 / 3
    assert m["f1"] == pytest.approx((2 * p * r / (p + r)) / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"] == pytest.approx(dcg / idcg / 2)
    assert m["mrr"] == pytest.approx(0.5 / 2)
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 4) / 3) / 2)


def test_coverage() -> None:
    assert coverage(np.array([[0, 1], [1, 2]]), num_items=10, k=2) == pytest.approx(0.3)
    assert coverage(np.array([[0, 1], [1, 2]]), num_items=10, k=1) == pytest.approx(0.2)


@given(st.lists(st.integers(0, 200), min_size=1, max_size=50), st.integers(1, 30))
def test_single_positive_agrees_with_topk_without_ties(positions: list[int], k: int) -> None:
    """Without ties the two metric paths must agree on one-relevant-item users."""
    greater = np.array(positions)
    single = single_positive_metrics(greater, np.zeros_like(greater), k)
    width = max(k, max(positions) + 1)
    topk = np.tile(np.arange(1000, 1000 + width), (len(positions), 1))
    relevant = []
    for row, p in enumerate(positions):
        topk[row, p] = row  # item id `row` sits at position p
        relevant.append(np.array([row]))
    multi = topk_metrics(topk, relevant, k)
    for name in ("hr", "ndcg", "recall", "precision", "f1", "mrr", "map"):
        assert single[name] == pytest.approx(multi[name]), name


@given(st.integers(0, 50), st.integers(0, 50), st.integers(1, 20))
def test_ties_bounded_by_best_and_worst_case(greater: int, equal: int, k: int) -> None:
    expected = single_positive_metrics(np.array([greater]), np.array([equal]), k)
    best = single_positive_metrics(np.array([greater]), np.array([0]), k)
    worst = single_positive_metrics(np.array([greater + equal]), np.array([0]), k)
    for name in ("hr", "ndcg", "mrr"):
        assert worst[name] - 1e-12 <= expected[name] <= best[name] + 1e-12
