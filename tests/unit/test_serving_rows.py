"""The served head's synthetic rows and per-user churn scores: the times the worker scores a
user, the labels, and who may be flagged (trainer/labels/scoring_points.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stream.contract.events import Event
from stream.contract.features import NAMES
from stream.contract.tokenizer import Vocabulary
from trainer.fit.feature_head import FeatureHead
from trainer.labels.scoring_points import (
    RowSpec,
    ScoringRules,
    labelled_rows,
    scoring_points,
    user_max_scores,
)

VOCAB = Vocabulary()
HOUR, DAY = 3_600_000, 86_400_000
T0 = 1_700_000_000_000


def views(user: str, hours: list[float]) -> list[Event]:
    return [Event(f"{user}-{i}", user, T0 + int(h * HOUR), "view") for i, h in enumerate(hours)]


def test_the_worker_scores_after_each_event_and_at_each_silence_level() -> None:
    events = views("u", [0, 1, 30, 31])  # a 29 h gap, then quiet until the end
    end = T0 + 31 * HOUR + 5 * DAY
    points = [
        (p.index, p.at_ms - T0) for p in scoring_points(events, VOCAB, 64, end, ScoringRules())
    ]
    assert points == [
        (0, 0),
        (1, 1 * HOUR),
        (1, 1 * HOUR + DAY),  # silent a day before the event at 30 h
        (2, 30 * HOUR),
        (3, 31 * HOUR),
        (3, 31 * HOUR + DAY),
        (3, 31 * HOUR + 2 * DAY),
        (3, 31 * HOUR + 4 * DAY),
    ]


def test_churn_labels_stopped_and_protocol() -> None:
    spec = RowSpec(churn_horizon_ms=3 * DAY, purchase_horizon_ms=2 * DAY)
    end = T0 + 20 * DAY
    last = T0 + 5 * DAY
    assert spec.churn(last, last, end) == 1.0  # nothing after: stopped
    assert spec.churn(last - HOUR, last, end) == 0.0  # one more event to come
    assert spec.churn(end - 2 * DAY, last, end) is None  # under 3 days of data left
    protocol = RowSpec(3 * DAY, 2 * DAY, churn_label="protocol")
    assert protocol.churn(last - 2 * DAY, last, end) == 1.0  # stops within 3 days
    assert protocol.churn(end - 5 * DAY, last, end) is None  # T + 6 days is past the end
    with pytest.raises(ValueError):
        RowSpec(3 * DAY, 2 * DAY, churn_label="other")


def test_rows_are_labelled_from_the_users_future() -> None:
    by_user = {
        "gone": views("gone", [0, 2, 25, 26]),  # stops after 26 h
        "stays": views("stays", [0, 2, 25, 26, *(26 + 24 * d for d in range(1, 13))]),
    }
    by_user["stays"].append(Event("stays-buy", "stays", T0 + 40 * HOUR, "purchase"))
    by_user["stays"].sort(key=lambda e: e.ts_ms)
    spec = RowSpec(churn_horizon_ms=3 * DAY, purchase_horizon_ms=2 * DAY, cutoffs_per_user=100)
    rows = labelled_rows(by_user, VOCAB, spec, end_ms=T0 + 14 * DAY)
    assert rows.features.shape == (len(rows.users), len(NAMES))
    silence = rows.features[:, NAMES.index("log_silence_hours")]
    gone = np.array([u == "gone" for u in rows.users])
    # "gone": rows at 25 h, 26 h and silent at 1, 2, 4, 8 days after 26 h (all under 11 d).
    assert gone.sum() == 6 and rows.churn[gone].tolist() == [0, 1, 1, 1, 1, 1]
    assert np.allclose(np.expm1(silence[gone]), [0, 0, 24, 48, 96, 192], atol=1e-3)
    assert rows.churn[~gone].sum() == 0
    # The purchase at 40 h: rows of "stays" up to 2 days before it are positive.
    stays_at = [h for h, g in zip(np.expm1(silence), gone, strict=True) if not g]
    assert rows.purchase[~gone].sum() >= 1 and len(stays_at) == (~gone).sum()


def test_a_user_is_scored_only_where_a_churn_alert_may_fire() -> None:
    head = FeatureHead(
        mean=[0.0] * len(NAMES),
        scale=[1.0] * len(NAMES),
        coef=[1.0 if n == "log_silence_hours" else 0.0 for n in NAMES],
        intercept=-5.0,
        candidate="logistic_c0.1",
    )
    by_user = {"two": views("two", [0, 1]), "three": views("three", [0, 1, 2])}
    best = user_max_scores(by_user, head, VOCAB, 64, end_ms=T0 + 10 * DAY)
    assert best["two"] == -1.0  # two events: never enough for a churn alert
    # Three events: the highest score is at the longest silence level reached (8 days).
    assert best["three"] == pytest.approx(1 / (1 + np.exp(5 - np.log1p(8 * 24))))
