"""The anomaly alert threshold per user, as the demo counts anomaly alerts.

Each user's events are folded through the worker's `apply_event`, and the state after every
event is scored by a version's network (its calibrated anomaly score, what Triton returns as
ANOMALY). A user is flagged when any of those scores reaches the threshold; the truth is the
generator's anomaly (bot, scraper or takeover), as in stream/demo/run.py, over every
generated user. The threshold is the lowest that reaches the target precision on validation
users (trainer/thresholds.py on each user's highest score), and is then measured on held-out
users generated with other seeds. Scoring after every event is what stream/demo/rules_truth.py
does for the rules; the worker scores a user once per window, so it sees at most these
scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig, UserTruth
from stream.scoring.alerts import BURST, TAKEOVER, AlertRules, evaluate
from trainer.labels.scoring_points import synthetic_users

BATCH = 256


def anomaly_labels(users: Sequence[str], truth: dict[str, UserTruth]) -> npt.NDArray[np.float64]:
    return np.array([float(truth[u].anomaly is not None) for u in users])


def user_max_anomaly(
    model: Any, events_by_user: dict[str, list[Any]], vocab: Vocabulary, length: int
) -> dict[str, float]:
    """Each user's highest anomaly score over the states after each of their events."""
    owners: list[str] = []
    tokens: list[npt.NDArray[Any]] = []
    for user in sorted(events_by_user):
        state: UserState | None = None
        for event in events_by_user[user]:
            state, fresh = apply_event(state, event, vocab, length)
            if fresh:
                owners.append(user)
                tokens.append(state.padded(length))
    best: dict[str, float] = {}
    for start in range(0, len(tokens), BATCH):
        batch = torch.from_numpy(np.stack(tokens[start : start + BATCH]).astype(np.int64))
        with torch.inference_mode():
            scores = model.score(batch).anomaly.float().numpy()
        for user, score in zip(owners[start : start + BATCH], scores, strict=True):
            best[user] = max(best.get(user, -1.0), float(score))
    return best


def score_users(
    config: SyntheticConfig, model: Any, vocab: Vocabulary, length: int
) -> tuple[dict[str, UserTruth], dict[str, float]]:
    """The generated users' truth and each user's highest anomaly score (-1 for a user
    without events: never flagged)."""
    by_user, truth, _ = synthetic_users(config)
    best = user_max_anomaly(model, by_user, vocab, length)
    return truth, {user: best.get(user, -1.0) for user in sorted(truth)}


def user_level(
    configs: Sequence[SyntheticConfig], model: Any, vocab: Vocabulary, length: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(anomaly labels, highest anomaly score) over every user of these data sets."""
    labels: list[npt.NDArray[np.float64]] = []
    scores: list[float] = []
    for config in configs:
        truth, best = score_users(config, model, vocab, length)
        labels.append(anomaly_labels(sorted(truth), truth))
        scores += [best[user] for user in sorted(truth)]
    return np.concatenate(labels), np.array(scores)


def rules_flagged(
    events: Sequence[Event], rules: AlertRules, vocab: Vocabulary, length: int
) -> set[str]:
    """Users the burst and takeover rules flag, each evaluated after every event with no model
    scores (NaN), as stream/demo/rules_truth.py counts them."""
    states: dict[str, UserState] = {}
    flagged: set[str] = set()
    nan = float("nan")
    for event in events:
        user = event.user_id
        state, fresh = apply_event(states.get(user), event, vocab, length)
        if not fresh:
            continue
        states[user], raised = evaluate(state, user, nan, nan, nan, "rules-only", rules)
        if any(alert.kind in (BURST, TAKEOVER) for alert in raised):
            flagged.add(user)
    return flagged


def precision_recall(flagged: set[str], actual: set[str]) -> dict[str, Any]:
    hits = len(flagged & actual)
    return {
        "precision": hits / len(flagged) if flagged else None,
        "recall": hits / len(actual) if actual else None,
        "flagged": len(flagged),
        "anomalous": len(actual),
    }
