"""choose_threshold: a threshold only where its precision is clearly above the base rate, under
the alert budget, never on everyone; otherwise None and why."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.thresholds import choose_threshold, precision_recall_at, wilson_lower


def _cdnow_like(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """70 % positives and a weak score: a 0.6 target is below the base rate."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(float)
    return y, y * 0.3 + rng.random(n)


def test_wilson_lower_bound_by_hand() -> None:
    # 8 of 10: p 0.8, z 1.96 -> (0.8 + 0.19208 - 1.96 * sqrt(0.016 + 0.0009604)) / 1.38416
    assert float(wilson_lower(8, 10)) == pytest.approx(0.4902, abs=1e-4)
    assert float(wilson_lower(0, 0)) == 0.0


def test_a_target_below_the_base_rate_never_flags_everyone() -> None:
    y, s = _cdnow_like()
    choice = choose_threshold(y, s, target_precision=0.6)
    assert choice.threshold is not None
    at = precision_recall_at(y, s, choice.threshold)
    assert at["alerts"] < len(y)
    assert choice.precision_low95 is not None and choice.precision_low95 >= 1.1 * choice.base_rate
    # The lowest score meets the target too, by flagging every row at the base rate.
    flag_all = precision_recall_at(y, s, float(s.min()))
    assert flag_all["precision"] == pytest.approx(y.mean()) and flag_all["precision"] >= 0.6


def test_the_budget_caps_the_alert_rate_and_keeps_the_most_recall_under_it() -> None:
    y, s = _cdnow_like()
    choice = choose_threshold(y, s, target_precision=0.6, max_alert_rate=0.2)
    assert choice.threshold is not None
    at = precision_recall_at(y, s, choice.threshold)
    assert at["alerts"] <= 0.2 * len(y) and choice.alert_rate <= 0.2
    assert at["precision"] == pytest.approx(choice.precision)
    # The next lower score would exceed the budget.
    lower = np.max(s[s < choice.threshold])
    assert precision_recall_at(y, s, lower)["alerts"] > 0.2 * len(y)


def test_a_score_with_no_signal_raises_no_alert_and_says_why() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.7).astype(float)
    choice = choose_threshold(y, rng.random(3000), target_precision=0.6, max_alert_rate=0.3)
    assert choice.threshold is None
    assert "base rate" in choice.reason and "no alert" in choice.reason
    assert choice.to_dict()["threshold"] is None


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_labels_of_one_class_give_no_threshold(label: float) -> None:
    choice = choose_threshold(np.full(50, label), np.arange(50.0), target_precision=0.6)
    assert choice.threshold is None and "one class" in choice.reason


def test_nan_scores_give_no_threshold() -> None:
    s = np.arange(20.0)
    s[3] = np.nan
    choice = choose_threshold(np.r_[np.ones(10), np.zeros(10)], s, target_precision=0.5)
    assert choice.threshold is None and "NaN" in choice.reason


def test_a_clear_score_gets_the_lowest_qualifying_threshold() -> None:
    # 100 rows, 25 positives scored 0.9..; negatives below: precision 1 down to 25 alerts.
    y = np.r_[np.ones(25), np.zeros(75)]
    s = np.r_[np.linspace(1.0, 0.9, 25), np.linspace(0.8, 0.0, 75)]
    choice = choose_threshold(y, s, target_precision=0.6, max_alert_rate=0.5)
    assert choice.threshold is not None
    at = precision_recall_at(y, s, choice.threshold)
    assert at["precision"] >= 0.6 and at["recall"] == 1.0
    assert choice.alerts == at["alerts"] == 41  # 25 / 41 = 0.61; 25 / 42 < 0.6
    assert choice.to_dict()["validation_alerts"] == 41


def test_too_few_alerts_give_no_threshold() -> None:
    y = np.r_[np.ones(3), np.zeros(97)]
    s = np.r_[[3.0, 2.0, 1.0], np.zeros(97)]
    choice = choose_threshold(y, s, target_precision=0.9, min_alerts=10)
    assert choice.threshold is None and "10 alerts" in choice.reason


def test_a_bound_barely_above_the_base_rate_is_not_clearly_above_it() -> None:
    # 10,000 rows at a 0.7 base rate; the top 9,000 hold 6,450 positives: precision 0.717,
    # its Wilson lower bound (0.708) above the base rate but under 1.1 x it (0.77).
    y = np.r_[np.ones(6450), np.zeros(2550), np.ones(550), np.zeros(450)]
    s = np.r_[np.full(9000, 1.0), np.zeros(1000)]
    assert choose_threshold(y, s, target_precision=0.6, min_lift=1.0).threshold == 1.0
    choice = choose_threshold(y, s, target_precision=0.6)
    assert choice.threshold is None and "1.1 x" in choice.reason
    assert choice.alerts == 9000 and choice.precision == pytest.approx(0.7167, abs=1e-4)
