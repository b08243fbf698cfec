"""The gate's verdicts from plain figures, and the paired bootstrap they come from."""

from __future__ import annotations

import numpy as np

from trainer.evaluate.heldout import Bootstrap, auc_draws, mean_draws
from trainer.gate import Estimate, Measure, decide, metric_verdict


def auc(value: float, lo: float, hi: float) -> Estimate:
    return Estimate(value, (lo, hi))


def test_a_difference_entirely_below_minus_margin_is_worse_and_named() -> None:
    measure = Measure(
        "roc_auc", auc(0.70, 0.66, 0.74), auc(0.80, 0.77, 0.83), auc(-0.10, -0.13, -0.07)
    )
    decision = decide({"churn": [measure]}, margin=0.01)
    assert not decision.promote
    assert decision.tasks["churn"].verdict == "worse"
    assert "churn" in decision.reason and "-0.100" in decision.reason


def test_an_interval_that_reaches_past_minus_margin_is_not_worse() -> None:
    measure = Measure(
        "roc_auc", auc(0.79, 0.76, 0.82), auc(0.80, 0.77, 0.83), auc(-0.01, -0.03, 0.01)
    )
    assert metric_verdict(measure, margin=0.005)[0] == "not worse"


def test_a_difference_above_zero_is_better_and_nothing_served_is_new() -> None:
    better = Measure("roc_auc", auc(0.85, 0.82, 0.88), auc(0.80, 0.77, 0.83), auc(0.05, 0.02, 0.08))
    new = Measure("hr@10", auc(0.2, 0.18, 0.22))
    decision = decide({"churn": [better], "next_items": [new]}, margin=0.005)
    assert decision.promote
    assert decision.tasks["churn"].verdict == "better"
    assert decision.tasks["next_items"].verdict == "new"


def test_a_roc_auc_that_does_not_clear_chance_is_refused_even_when_nothing_serves() -> None:
    decision = decide({"purchase": [Measure("roc_auc", auc(0.52, 0.48, 0.56))]}, margin=0.005)
    assert not decision.promote
    assert "does not clear 0.5" in decision.reason


def test_a_task_is_as_bad_as_its_worst_metric() -> None:
    hr = Measure("hr@10", auc(0.3, 0.28, 0.32), auc(0.3, 0.28, 0.32), auc(0.0, -0.01, 0.01))
    mrr = Measure("mrr@10", auc(0.1, 0.09, 0.11), auc(0.2, 0.19, 0.21), auc(-0.1, -0.11, -0.09))
    decision = decide({"next_items": [hr, mrr]}, margin=0.005)
    assert decision.tasks["next_items"].verdict == "worse"
    assert "mrr@10" in decision.reason and "hr@10" not in decision.reason.split("(")[0]


def test_nan_intervals_are_no_evidence_of_worse() -> None:
    nan = float("nan")
    measure = Measure("precision", auc(nan, nan, nan), auc(nan, nan, nan), auc(nan, nan, nan))
    assert metric_verdict(measure, margin=0.005)[0] == "not worse"


def test_the_table_has_the_designed_shape() -> None:
    measure = Measure(
        "roc_auc",
        auc(0.8, 0.7, 0.9),
        auc(0.7, 0.6, 0.8),
        auc(0.1, 0.05, 0.15),
        ("rfm_gbdt", auc(0.75, 0.7, 0.8)),
    )
    row = decide({"churn": [measure]}, margin=0.005).table()["churn"]
    assert row["metric"] == "roc_auc" and row["verdict"] == "better"
    assert row["candidate"] == {"value": 0.8, "interval": [0.7, 0.9]}
    assert row["baseline"]["name"] == "rfm_gbdt"
    assert row["difference"]["interval"] == [0.05, 0.15]


def test_paired_bootstrap_finds_a_clear_difference_and_none_between_equals() -> None:
    rng = np.random.default_rng(0)
    users = [f"u{i // 4}" for i in range(800)]  # 4 rows per user move together
    y = rng.integers(0, 2, 800).astype(np.float64)
    good = y + rng.normal(0, 0.5, 800)
    bad = y + rng.normal(0, 2.0, 800)
    boot = Bootstrap.over(users, rounds=200, seed=0)
    draws = {name: auc_draws(boot, y, s) for name, s in {"good": good, "bad": bad}.items()}
    diff = boot.estimate(draws["good"] - draws["bad"], draws["good"].mean() * 0)
    assert diff.interval[0] > 0.05
    same = boot.estimate(draws["good"] - draws["good"], 0.0)
    assert same.interval == (0.0, 0.0)
    rate = boot.estimate(mean_draws(boot, y), float(y.mean()))
    assert rate.interval[0] < y.mean() < rate.interval[1]


def _alerts(candidate: tuple[float, float], serving: tuple[float, float]) -> list[Measure]:
    """churn_alert measures from (precision, recall) pairs, with +-0.05 intervals."""

    def est(value: float) -> Estimate:
        return auc(value, value - 0.05, value + 0.05)

    return [
        Measure(metric, est(ours), est(theirs), est(ours - theirs))
        for metric, ours, theirs in zip(("precision", "recall"), candidate, serving, strict=True)
    ]


def test_alerts_that_keep_the_promised_precision_beat_alerts_that_break_it() -> None:
    """The reproducible run of 2026-12-06: the candidate's alerts at precision 0.69, recall
    0.83 against the serving version's 0.36 / 0.99 (nearly everyone flagged), target 0.6."""
    tasks = {"churn_alert": _alerts((0.69, 0.83), (0.36, 0.99))}
    assert not decide(tasks, margin=0.005).promote  # each metric alone: recall is worse
    decision = decide(tasks, margin=0.005, promises={"churn_alert": 0.6})
    assert decision.promote
    assert decision.tasks["churn_alert"].verdict == "better"
    assert "keep the promised precision 0.6" in decision.tasks["churn_alert"].reason


def test_alerts_that_break_the_promise_are_refused_whatever_their_recall() -> None:
    tasks = {"churn_alert": _alerts((0.40, 0.99), (0.70, 0.60))}
    decision = decide(tasks, margin=0.005, promises={"churn_alert": 0.6})
    assert not decision.promote
    assert "churn_alert" in decision.reason and "the candidate's do not" in decision.reason


def test_when_both_keep_the_promise_recall_decides() -> None:
    promise = {"churn_alert": 0.6}
    lower = decide({"churn_alert": _alerts((0.80, 0.50), (0.65, 0.70))}, 0.005, promise)
    assert lower.tasks["churn_alert"].verdict == "worse" and "recall" in lower.reason
    level = decide({"churn_alert": _alerts((0.80, 0.70), (0.65, 0.70))}, 0.005, promise)
    assert level.tasks["churn_alert"].verdict == "not worse"


def test_new_alerts_below_their_promise_are_refused() -> None:
    measures = [Measure("precision", auc(0.3, 0.25, 0.35)), Measure("recall", auc(0.9, 0.85, 0.95))]
    decision = decide({"churn_alert": measures}, 0.005, {"churn_alert": 0.6})
    assert decision.tasks["churn_alert"].verdict == "worse"
    kept = [Measure("precision", auc(0.62, 0.55, 0.69)), Measure("recall", auc(0.5, 0.4, 0.6))]
    assert decide({"churn_alert": kept}, 0.005, {"churn_alert": 0.6}).promote
