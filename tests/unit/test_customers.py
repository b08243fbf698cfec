"""Churn and purchase protocols on real-data formats, BG/NBD, alert thresholds by precision,
and the scorecard `clickscore evaluate churn|purchase` prints."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.contract.events import Event
from stream.contract.features import NAMES, user_features
from stream.contract.state import apply_event
from stream.contract.tokenizer import Vocabulary
from stream.datasets.cdnow import load_cdnow
from stream.datasets.loaders import LoadStats
from trainer.baselines import bgnbd
from trainer.evaluate.customers import ScorecardArgs, scorecard
from trainer.labels.cohorts import (
    BEHAVIOUR,
    DAY_MS,
    ChurnProtocol,
    PurchaseProtocol,
    churn_cohort,
    purchase_cohort,
)
from trainer.thresholds import precision_recall_at, threshold_for_precision

PUBLISHED = bgnbd.BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426)  # CDNOW, Fader et al. 2005
START = date(1997, 1, 1)


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def _purchase(customer: str, week: float, price: float = 10.0) -> Event:
    when = _ms(START) + int(week * 7 * DAY_MS)
    return Event(f"{customer}-{week}", customer, when, "purchase", item_id="cds", price=price)


def _bgnbd_log(path: Path, customers: int, seed: int) -> None:
    """A CDNOW-format file drawn from BG/NBD at the published parameters, 78 weeks long."""
    rng = np.random.default_rng(seed)
    first = rng.uniform(0, 12, customers)
    x, t_x = bgnbd.simulate(PUBLISHED, 78 - first, rng)
    lines = [" customer_id  date number_of_cds  dollar_value"]
    for c in range(customers):
        # Purchase times after the first: uniform given x within (0, t_x], the last at t_x.
        times = [0.0, *sorted(rng.uniform(0, t_x[c], max(int(x[c]) - 1, 0))), t_x[c]]
        for t in times[: int(x[c]) + 1]:
            day = START + timedelta(days=int((first[c] + t) * 7))
            lines.append(f" {c + 1:05d} {day:%Y%m%d}  1   {rng.uniform(5, 60):.2f}")
    path.write_text("\n".join(lines) + "\n")


def test_bgnbd_recovers_the_parameters_it_was_drawn_with() -> None:
    rng = np.random.default_rng(0)
    T = rng.uniform(27, 39, 20_000)
    x, t_x = bgnbd.simulate(PUBLISHED, T, rng)
    fitted = bgnbd.fit(x, t_x, T)
    for name in ("r", "alpha"):
        assert getattr(fitted, name) == pytest.approx(getattr(PUBLISHED, name), rel=0.1), name
    # a and b trade off against each other; their mean dropout probability is well pinned.
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(0.793 / (0.793 + 2.426), abs=0.02)
    assert fitted.a == pytest.approx(PUBLISHED.a, rel=0.25)
    # Maximum likelihood: at least as likely as the truth on the same data.
    truth = bgnbd.log_likelihood(np.array([0.243, 4.414, 0.793, 2.426]), x, t_x, T).sum()
    assert fitted.log_likelihood >= truth


def test_bgnbd_p_alive_and_expected_purchases() -> None:
    x, t_x, T = np.array([0.0, 4.0, 4.0]), np.array([0.0, 30.0, 5.0]), np.array([38.0] * 3)
    alive = PUBLISHED.p_alive(x, t_x, T)
    assert alive[0] == 1.0  # no repeat purchase: never seen to drop out
    assert alive[1] > alive[2]  # same purchases, the recent buyer is likelier alive
    e39 = PUBLISHED.expected_purchases(39, x, t_x, T)
    assert np.all(e39 > 0) and e39[1] > e39[2]
    assert np.all(PUBLISHED.expected_purchases(78, x, t_x, T) > e39)


def test_cdnow_loader_reads_purchases_and_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    path.write_text(
        " customer_id  date number_of_cds  dollar_value\n"
        " 00001 19970101  1   11.77\n"
        " 00001 19970118  2   17.76\n"
        " 00002 1997XX12  1   12.00\n"
        " 00003 19970102\n"
    )
    stats = LoadStats()
    events = list(load_cdnow(path, stats))
    assert [(e.user_id, e.event_type, e.price) for e in events] == [
        ("00001", "purchase", 11.77),
        ("00001", "purchase", 17.76),
    ]
    assert events[0].ts_ms == _ms(date(1997, 1, 1))
    assert events[1].properties == {"cds": 2}
    assert (stats.rows, stats.events, stats.malformed) == (4, 2, 2)
    assert [e.event_id for e in load_cdnow(path)] == [e.event_id for e in events]


def test_churn_protocol_labels_who_buys_again_in_the_holdout() -> None:
    events = [
        _purchase("a", 0),
        _purchase("a", 10),
        _purchase("a", 45),  # buys again in the holdout: not churned
        _purchase("b", 2),  # never again: churned
        _purchase("c", 41),  # first bought after calibration: not a customer yet
        _purchase("d", 1),
        _purchase("d", 90),  # after the holdout: churned within it
    ]
    cohort = churn_cohort(events, ChurnProtocol(calibration_weeks=39, holdout_weeks=39))
    assert cohort.customers == ["a", "b", "d"]
    assert cohort.label.tolist() == [0.0, 1.0, 1.0]
    assert cohort.horizon_weeks == 39
    a = dict(zip(BEHAVIOUR, cohort.features[0], strict=True))
    assert a["purchases"] == 2 and a["repeat_purchases"] == 1 and a["spend"] == 20.0
    assert a["recency_days"] == 29 * 7 and a["age_days"] == 39 * 7
    assert cohort.bgnbd_inputs[0].tolist() == [1.0, 10.0, 39.0]  # x, t_x, T in weeks


def test_purchase_protocol_cuts_daily_back_from_the_end() -> None:
    day0 = _ms(date(2017, 11, 25))

    def event(user: str, hours: float, kind: str, item: str = "i1") -> Event:
        return Event(f"{user}{hours}{kind}", user, day0 + int(hours * 3_600_000), kind, item)

    events = [event("u", 0, "view")]
    events += [event("u", 24 * d + 1, "view") for d in range(1, 6)]
    events += [event("u", 100, "add_to_cart"), event("u", 121, "purchase")]
    events += [event("v", 0, "view"), event("v", 125, "view")]
    cohort = purchase_cohort(events, PurchaseProtocol(horizon_ms=DAY_MS, step_ms=DAY_MS))
    cutoffs = sorted(set(cohort.cutoff_ms.tolist()))
    end = day0 + 125 * 3_600_000 + 1
    assert cutoffs == [end - 2 * DAY_MS, end - DAY_MS]
    rows = zip(cohort.customers, cohort.cutoff_ms, cohort.label, strict=True)
    labels = {(c, int(t)): y for c, t, y in rows}
    assert labels[("u", end - DAY_MS)] == 1.0  # bought at hour 121, within a day of 101
    assert labels[("u", end - 2 * DAY_MS)] == 0.0
    assert labels[("v", end - DAY_MS)] == 0.0
    u_at_101 = cohort.features[cohort.customers.index("u") + 1]
    assert u_at_101[BEHAVIOUR.index("open_carts")] == 1.0
    # The served model's input: the worker's state of the events before each cut-off.
    vocab = Vocabulary()
    for row, (customer, cutoff) in enumerate(zip(cohort.customers, cohort.cutoff_ms, strict=True)):
        state = None
        for e in sorted(events, key=lambda e: e.ts_ms):
            if e.user_id == customer and e.ts_ms < cutoff:
                state, _ = apply_event(state, e, vocab, 64)
        assert state is not None
        expected = user_features(state, int(cutoff), vocab)
        np.testing.assert_allclose(cohort.state_features[row], expected)
    served = dict(zip(NAMES, cohort.state_features[cohort.customers.index("u") + 1], strict=True))
    assert served["log_open_carts"] == pytest.approx(np.log1p(1))
    assert served["log_purchases"] == 0.0  # the purchase at hour 121 is after the cut-off


def test_threshold_for_precision_takes_the_most_recall_at_the_target() -> None:
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0] * 3)
    s = np.linspace(1, 0, len(y))
    picked = threshold_for_precision(y, s, 0.6, min_alerts=1)
    assert picked is not None
    at = precision_recall_at(y, s, picked.threshold)
    assert at["precision"] >= 0.6 and picked.precision == at["precision"]
    # One more alert would fall below the target.
    lower = s[s < picked.threshold].max()
    assert precision_recall_at(y, s, lower)["precision"] < 0.6
    # The top two alone are right; three or more alerts never reach 0.99.
    assert threshold_for_precision(y, s, 0.99, min_alerts=2) is not None
    assert threshold_for_precision(y, s, 0.99, min_alerts=3) is None
    assert threshold_for_precision(np.zeros(5), np.arange(5.0), 0.5) is None


def test_scorecard_shape_and_the_served_model_beats_chance(tmp_path: Path) -> None:
    path = tmp_path / "cdnow.txt"
    _bgnbd_log(path, 600, seed=1)
    cohort = churn_cohort(load_cdnow(path), ChurnProtocol(39, 39))
    report = scorecard(cohort, ScorecardArgs(task="churn", bootstrap=50, alert_precision=0.6))
    assert set(report["models"]) == {"model", "full_history", "rfm_gbdt", "bgnbd", "recency"}
    assert (
        report["customers"] == len(set(c for c in cohort.customers)) - report["training_customers"]
    )
    for entry in report["models"].values():
        low, high = entry["roc_auc_ci95"]
        assert low <= entry["roc_auc"] <= high
    assert report["models"]["model"]["roc_auc"] > 0.6
    assert set(report["differences"]) == {"full_history", "rfm_gbdt", "bgnbd", "recency"}
    assert report["served"]["candidate"] in report["served"]["validation"]
    assert report["served"]["candidate"].startswith("logistic_c")  # the servable head
    assert report["full_history"]["candidate"] in report["full_history"]["validation"]


def test_evaluate_churn_command_prints_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cdnow.txt"
    _bgnbd_log(path, 300, seed=2)
    argv = ["evaluate", "churn", "--format", "cdnow", str(path), "--json", "--bootstrap", "20"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "cdnow" and report["customers"] > 0
    assert {"roc_auc", "pr_auc"} <= set(report["models"]["model"])
    assert main([*argv[:-3], "--bootstrap", "20"]) == 0
    assert "model minus baseline" in capsys.readouterr().out


def test_bootstrap_metrics_match_scikit_learn_with_weights_and_ties() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from trainer.evaluate.customers import _ranked, weighted_metrics

    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(np.float64)
    s = np.round(y * 0.4 + rng.random(500), 1)  # many ties
    w = rng.poisson(1.0, (4, 500)).astype(np.float64)
    order, last_of_tie = _ranked(s)
    auc, ap = weighted_metrics(y[order], w[:, order], last_of_tie)
    for i in range(4):
        assert auc[i] == pytest.approx(roc_auc_score(y, s, sample_weight=w[i]), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y, s, sample_weight=w[i]), abs=1e-12)


def test_evaluate_purchase_command_on_a_taobao_format_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    start = 1_511_539_200  # 2017-11-24 16:00 UTC, midnight in Beijing
    rows = []
    for user in range(120):
        keen = rng.random()  # some users cart and buy more than others
        t = start + int(rng.integers(0, 86_400))
        while t < start + 9 * 86_400:
            weights = np.array([0.8, 0.1 * keen + 0.05, 0.05, 0.1 * keen])
            kind = rng.choice(["pv", "cart", "fav", "buy"], p=weights / weights.sum())
            rows.append(f"{user},{rng.integers(1, 300)},{rng.integers(1, 20)},{kind},{t}")
            t += int(rng.exponential(6 * 3600))
    path = tmp_path / "taobao.csv"
    path.write_text("\n".join(rows) + "\n")
    argv = ["evaluate", "purchase", "--format", "taobao", str(path), "--json", "--bootstrap", "20"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "purchase" and report["rows"] >= report["customers"] > 0
    assert set(report["models"]) == {"model", "full_history", "rfm_gbdt", "bgnbd", "recency"}
    assert 0.0 < report["base_rate"] < 1.0
