"""The pipeline's labels: users split test / validation / train by a stable hash, and each
user's scoring points (trainer/labels/scoring_points.py: the times the worker scores them)
with churn and purchase labels and the state the worker would send.

Test users are held out of everything fitted or chosen: every gate figure is measured on them.
Validation users choose (feature head or encoder, alert thresholds); train users fit.
A split whose train or validation labels are all of one class is refused (HistoryRefused):
nothing can be fitted or chosen on them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zlib import crc32

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.features import stack_features
from stream.contract.state import UserState, stack_item_hashes, stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.scoring.idle import silence_item_hashes, silence_tokens
from trainer.history import HistoryRefused
from trainer.labels.scoring_points import RowSpec, ScoringRules, scoring_points
from trainer.labels.sequences import held_out

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
GROUPS = ("train", "validation", "test")


def group_of(user: str, seed: int) -> str:
    if held_out(user, TEST_FRACTION, seed):
        return "test"
    return "validation" if held_out(user, VALIDATION_FRACTION, seed + 1) else "train"


@dataclass
class Points:
    """Scoring points of some users: the worker's state, when, and the labels."""

    states: list[UserState] = field(default_factory=list)
    at_ms: list[int] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    churn: list[float] = field(default_factory=list)
    purchase: list[float] = field(default_factory=list)
    next_item: list[str | None] = field(default_factory=list)  # the item of the next event
    may_alert: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states)

    def subset(self, keep: Sequence[bool] | npt.NDArray[np.bool_]) -> Points:
        out = Points()
        for name in vars(self):
            values = getattr(self, name)
            setattr(out, name, [v for v, k in zip(values, keep, strict=True) if k])
        return out

    def features(self, vocab: Vocabulary) -> npt.NDArray[np.float32]:
        return stack_features(self.states, self.at_ms, vocab)

    def inputs(self, vocab: Vocabulary, length: int) -> tuple[npt.NDArray[Any], ...]:
        """(tokens int64, item hashes int64, features float32) as the worker sends them: a
        silent point carries its silence as one more row (stream/scoring/idle.py)."""
        tokens = stack_padded(self.states, length).astype(np.int64)
        hashes = stack_item_hashes(self.states, length)
        silent = [
            i
            for i, (s, t) in enumerate(zip(self.states, self.at_ms, strict=True))
            if t > s.last_ts_ms
        ]
        if silent:
            states = [self.states[i] for i in silent]
            elapsed = [self.at_ms[i] - self.states[i].last_ts_ms for i in silent]
            tokens[silent] = silence_tokens(states, elapsed, vocab, length)
            hashes[silent] = silence_item_hashes(states, length)
        return tokens, hashes, self.features(vocab)

    def labels(self, task: str) -> npt.NDArray[np.float64]:
        return np.asarray(getattr(self, task), dtype=np.float64)


def labelled_points(
    by_user: dict[str, list[Event]],
    vocab: Vocabulary,
    spec: RowSpec,
    end_ms: int,
    *,
    every_point: bool = False,
) -> Points:
    """The rows trainer/labels/scoring_points.py `labelled_rows` makes (at most
    spec.cutoffs_per_user event points per user and every silent point, each with enough
    history and a decidable churn label), keeping the states; `every_point` keeps every
    scoring point instead, labelled or not (churn NaN where undecided): the per-user alert
    measure counts them all, as the demo does."""
    out = Points()
    rules = ScoringRules()
    for user in sorted(by_user):
        events = by_user[user]
        first, last = events[0].ts_ms, events[-1].ts_ms
        buys = [e.ts_ms for e in events if e.event_type == "purchase"]
        rng = random.Random(spec.seed * 1_000_003 + crc32(user.encode()))
        points = list(scoring_points(events, vocab, spec.sequence_length, end_ms, rules))
        if not every_point:
            points = [
                p
                for p in points
                if p.at_ms - first >= spec.min_history_ms
                and spec.churn(p.at_ms, last, end_ms) is not None
            ]
            after = [p for p in points if p.at_ms == p.state.last_ts_ms]
            keep = set(map(id, rng.sample(after, min(spec.cutoffs_per_user, len(after)))))
            points = [p for p in points if p.at_ms != p.state.last_ts_ms or id(p) in keep]
        for p in points:
            label = spec.churn(p.at_ms, last, end_ms)
            nxt = events[p.index + 1] if p.index + 1 < len(events) else None
            out.states.append(p.state)
            out.at_ms.append(p.at_ms)
            out.users.append(user)
            out.churn.append(float("nan") if label is None else label)
            out.purchase.append(
                float(any(p.at_ms < t <= p.at_ms + spec.purchase_horizon_ms for t in buys))
            )
            out.next_item.append(
                nxt.item_id if nxt is not None and p.at_ms == p.state.last_ts_ms else None
            )
            out.may_alert.append(rules.may_alert(p.state, p.at_ms))
    return out


def split_users(by_user: dict[str, list[Event]], seed: int) -> dict[str, dict[str, list[Event]]]:
    groups: dict[str, dict[str, list[Event]]] = {g: {} for g in GROUPS}
    for user, events in by_user.items():
        groups[group_of(user, seed)][user] = events
    return groups


def refuse_one_class(points: dict[str, Points]) -> None:
    """A task whose train or validation labels hold one class cannot be fitted or chosen."""
    for group in ("train", "validation"):
        rows = points[group]
        for task in ("churn", "purchase"):
            y = rows.labels(task)
            positives = int(np.nansum(y))
            if len(y) == 0 or positives in (0, len(y)):
                raise HistoryRefused(
                    f"{task} labels of the {group} users are all of one class ({positives} "
                    f"positive of {len(y)} rows): no {task} model can be fitted or chosen"
                )
