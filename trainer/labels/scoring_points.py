"""The served feature head on synthetic users: rows, churn alert threshold, held-out measure.

Rows. Each user's events are folded through the worker's `apply_event`; a row is the state
at a scoring time T, as the worker scores it: after an event (T = that event), or silent
(T = an event + a silence level, 1, 2, 4 ... days while no later event came, as
stream/scoring/idle.py re-scores). Purchase = a purchase within the purchase horizon after T
(trainer/labels/sequences.py's label). Churn, two labels (`churn_label`):

    stopped   (the default) the user has stopped: no event after T, decided only where at
              least the churn horizon of data follows T
    protocol  trainer/labels/sequences.py's: the user's last event is at most the churn
              horizon after T,
              decided only where T + 2 horizons is inside the data

`protocol` also labels the fading days before a stop as churn, which teaches the head that a
quiet day is churn; since an alert fires at a user's highest score, quiet days of regular users
then flag them: with it no threshold reaches 0.6 precision per user (docs/evaluation.md, "The
served model (model_repo/clickscore/6)"). At most `cutoffs_per_user` event rows per user
(random, seeded) and every silent row.

Threshold and measure, per user as the demo counts them (stream/demo/run.py): a user is
flagged when any of their scores at those same times, with enough history for a churn alert
(CLICKSCORE_CHURN_MIN_EVENTS, CLICKSCORE_CHURN_MIN_HISTORY_S), reaches the threshold; the truth
is the generator's churner persona. The threshold is the one that reaches the target precision
on validation users (trainer/thresholds.py, on each user's highest score), and is then
measured on held-out users generated with other seeds.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.features import stack_features
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig, UserTruth, generate
from stream.settings import WorkerSettings
from trainer.fit.feature_head import FeatureHead
from trainer.labels.sequences import group_by_user

_WORKER = WorkerSettings.model_fields


def _default(name: str) -> int:
    value = _WORKER[name].default
    assert isinstance(value, int)
    return value


@dataclass(frozen=True)
class ScoringRules:
    """When the worker scores a user and when a churn alert may fire (its defaults)."""

    silent_after_ms: int = _default("silent_rescore_after_s") * 1000
    silent_max_ms: int = _default("silent_rescore_max_s") * 1000
    min_events: int = _default("churn_min_events")
    min_history_ms: int = _default("churn_min_history_s") * 1000

    def levels_ms(self) -> list[int]:
        levels, level = [], self.silent_after_ms
        while 0 < level <= self.silent_max_ms:
            levels.append(level)
            level *= 2
        return levels

    def may_alert(self, state: UserState, at_ms: int) -> bool:
        """stream/scoring/alerts.py AlertRules.enough_history at this scoring time."""
        return (
            state.event_count >= self.min_events
            and at_ms - state.first_ts_ms >= self.min_history_ms
        )


@dataclass
class Point:
    state: UserState
    at_ms: int
    index: int  # of the user's last event folded in


def scoring_points(
    events: Sequence[Event], vocab: Vocabulary, length: int, end_ms: int, rules: ScoringRules
) -> Iterator[Point]:
    """The user's state at every time the worker scores it: after each event, and at each
    silence level passed before their next event (or the data's end)."""
    state: UserState | None = None
    for i, event in enumerate(events):
        state, fresh = apply_event(state, event, vocab, length)
        if not fresh:
            continue
        # A copy: the state moves on with the next event.
        snapshot = UserState.from_bytes(state.to_bytes())
        yield Point(snapshot, state.last_ts_ms, i)
        until = events[i + 1].ts_ms if i + 1 < len(events) else end_ms
        for level in rules.levels_ms():
            if state.last_ts_ms + level > until:
                break
            yield Point(snapshot, state.last_ts_ms + level, i)


@dataclass
class Rows:
    features: npt.NDArray[np.float32]
    churn: npt.NDArray[np.float64]
    purchase: npt.NDArray[np.float64]
    users: list[str]


@dataclass(frozen=True)
class RowSpec:
    churn_horizon_ms: int
    purchase_horizon_ms: int
    cutoffs_per_user: int = 32
    min_history_ms: int = 86_400_000
    sequence_length: int = 64
    seed: int = 0
    churn_label: str = "stopped"  # or "protocol"

    def __post_init__(self) -> None:
        if self.churn_label not in CHURN_LABELS:
            raise ValueError(f"churn_label must be one of {CHURN_LABELS}")

    def churn(self, at_ms: int, last_ms: int, end_ms: int) -> float | None:
        """The churn label of a row at at_ms of a user whose last event is last_ms; None where
        the data cannot decide it."""
        horizon = self.churn_horizon_ms
        if self.churn_label == "stopped":
            return float(last_ms <= at_ms) if at_ms + horizon <= end_ms else None
        return float(last_ms <= at_ms + horizon) if at_ms + 2 * horizon <= end_ms else None


CHURN_LABELS = ("stopped", "protocol")


def labelled_rows(
    by_user: dict[str, list[Event]], vocab: Vocabulary, spec: RowSpec, end_ms: int
) -> Rows:
    feats: list[UserState] = []
    times: list[int] = []
    churn: list[float] = []
    purchase: list[float] = []
    users: list[str] = []
    rules = ScoringRules()
    for user in sorted(by_user):
        events = by_user[user]
        first, last = events[0].ts_ms, events[-1].ts_ms
        buys = [e.ts_ms for e in events if e.event_type == "purchase"]
        rng = random.Random(spec.seed * 1_000_003 + crc32(user.encode()))
        points = [
            p
            for p in scoring_points(events, vocab, spec.sequence_length, end_ms, rules)
            if p.at_ms - first >= spec.min_history_ms
            and spec.churn(p.at_ms, last, end_ms) is not None
        ]
        after_event = [p for p in points if p.at_ms == p.state.last_ts_ms]
        keep = set(map(id, rng.sample(after_event, min(spec.cutoffs_per_user, len(after_event)))))
        for p in points:
            if p.at_ms == p.state.last_ts_ms and id(p) not in keep:
                continue
            feats.append(p.state)
            times.append(p.at_ms)
            churn.append(float(spec.churn(p.at_ms, last, end_ms) or 0.0))
            purchase.append(
                float(any(p.at_ms < t <= p.at_ms + spec.purchase_horizon_ms for t in buys))
            )
            users.append(user)
    return Rows(
        stack_features(feats, times, vocab),
        np.array(churn),
        np.array(purchase),
        users,
    )


def user_max_scores(
    by_user: dict[str, list[Event]],
    head: FeatureHead,
    vocab: Vocabulary,
    length: int,
    end_ms: int,
    rules: ScoringRules = ScoringRules(),
) -> dict[str, float]:
    """Each user's highest churn score among the times they may raise a churn alert."""
    out: dict[str, float] = {}
    for user in sorted(by_user):
        points = [
            p
            for p in scoring_points(by_user[user], vocab, length, end_ms, rules)
            if rules.may_alert(p.state, p.at_ms)
        ]
        if not points:
            out[user] = -1.0  # never scored with enough history: never flagged
            continue
        x = stack_features([p.state for p in points], [p.at_ms for p in points], vocab)
        out[user] = float(head.scores(x).max())
    return out


def synthetic_users(
    config: SyntheticConfig,
) -> tuple[dict[str, list[Event]], dict[str, UserTruth], int]:
    events, truth = generate(config)
    return group_by_user(events), truth, config.end_ms


def churner_labels(users: Sequence[str], truth: dict[str, UserTruth]) -> npt.NDArray[np.float64]:
    return np.array([float(truth[u].persona == "churner") for u in users])


def user_level(
    configs: Sequence[SyntheticConfig], head: FeatureHead, vocab: Vocabulary, length: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(churner labels, highest eligible churn score) over the users of these data sets
    (-1 for a user never scored with enough history: never flagged)."""
    labels: list[npt.NDArray[np.float64]] = []
    scores: list[float] = []
    for config in configs:
        by_user, truth, end_ms = synthetic_users(config)
        best = user_max_scores(by_user, head, vocab, length, end_ms)
        # Every generated user counts, as in the demo: one without events is never flagged.
        labels.append(churner_labels(sorted(truth), truth))
        scores += [best.get(user, -1.0) for user in sorted(truth)]
    return np.concatenate(labels), np.array(scores)


def describe(config: SyntheticConfig) -> dict[str, Any]:
    return {"users": config.users, "days": config.days, "seed": config.seed}
