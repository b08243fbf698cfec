"""Feedback to training: recorded outcomes of served churn alerts relabel their examples,
treated ones are dropped (trainer/labels/outcomes.py; no services)."""

from __future__ import annotations

import numpy as np

from stream.datasets.synthetic import SyntheticConfig, generate
from tests.conftest import make_settings
from trainer.fit.encoder_data import split
from trainer.labels.outcomes import OutcomeLabel, relabel

HOUR_MS = 3_600_000
HORIZON = 72 * HOUR_MS


def test_an_alerts_outcome_takes_the_latest_cutoff_before_it_within_a_horizon() -> None:
    users = ["a", "a", "a", "b", "c"]
    cutoffs = [0, 10 * HOUR_MS, 20 * HOUR_MS, 0, 0]
    churn = np.array([0, 0, 1, 0, 0], dtype=np.float32)
    done = relabel(
        users,
        cutoffs,
        churn,
        [
            OutcomeLabel("a", 12 * HOUR_MS, stayed_away=True, treated=False),  # row 1: 0 -> 1
            OutcomeLabel("a", 30 * HOUR_MS, stayed_away=False, treated=False),  # row 2: 1 -> 0
            OutcomeLabel("b", HORIZON + 1, stayed_away=True, treated=False),  # too late: none
            OutcomeLabel("c", HOUR_MS, stayed_away=False, treated=True),  # treated: dropped
            OutcomeLabel("d", HOUR_MS, stayed_away=True, treated=False),  # no examples
            OutcomeLabel("a", -1, stayed_away=True, treated=False),  # before every cut-off
        ],
        HORIZON,
    )
    assert done.churn.tolist() == [0, 1, 0, 0, 0]
    assert done.keep.tolist() == [True, True, True, True, False]
    assert (done.matched, done.changed, done.dropped) == (3, 2, 1)
    assert churn.tolist() == [0, 0, 1, 0, 0]  # the input is left as it was


def test_the_training_split_applies_the_outcomes_before_it_splits_users() -> None:
    settings = make_settings()
    events, _ = generate(SyntheticConfig(users=60, days=14, seed=3))
    plain = split(settings, events, {}, seed=0)
    examples = [plain.train, plain.validation, plain.test]
    users = [u for part in examples for u in part.user_ids]
    cutoffs = np.concatenate([part.cutoff_ms for part in examples])
    churn = np.concatenate([part.churn for part in examples])
    negative, positive = int(np.flatnonzero(churn == 0)[0]), int(np.flatnonzero(churn == 1)[0])
    outcomes = [
        OutcomeLabel(users[negative], int(cutoffs[negative]) + HOUR_MS, True, False),
        OutcomeLabel(users[positive], int(cutoffs[positive]), False, True),
    ]
    fed = split(settings, events, {}, seed=0, outcomes=outcomes)
    assert fed.outcome_labels == {"outcomes": 2, "matched": 2, "changed": 1, "dropped_treated": 1}
    total = sum(len(part) for part in examples)
    assert len(fed.train) + len(fed.validation) + len(fed.test) == total - 1
    assert sum(float(p.churn.sum()) for p in (fed.train, fed.validation, fed.test)) == (
        float(churn.sum())  # one negative became positive, one positive was dropped
    )
