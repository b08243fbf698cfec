"""Feedback to training: churn labels from what really happened after served alerts.

Where the history `clickscore train` reads (the events topic) belongs to users the served
version alerted on, the outcomes the worker and `clickscore outcomes` recorded
(churn_outcomes, docs/monitoring.md) relabel the matching training examples:

- the example of an alert is the user's latest cut-off at or before the alert's event time,
  at most one churn horizon before it (the alert was raised on that state, or on the
  silence after it);
- `stayed_away` makes its churn label 1 and `returned` 0: the outcome the served alert was
  judged by replaces the label the history gives (they differ where a user came back and
  then stopped within the horizon, or the history ends early);
- an alert with a retention action (treated) drops its example: a saved customer looks like
  a false alarm, so neither label can be trusted there;
- every other example keeps its label from the history (trainer/labels/sequences.py).

Pure except `read_outcome_labels`, which reads the table.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream.settings import TrainerSettings


@dataclass(frozen=True)
class OutcomeLabel:
    user_id: str
    alert_ms: int
    stayed_away: bool
    treated: bool


@dataclass(frozen=True)
class Relabelled:
    churn: npt.NDArray[np.float32]
    keep: npt.NDArray[np.bool_]  # False: an example of a treated alert
    matched: int  # examples an outcome applied to
    changed: int  # of them, labels the outcome changed
    dropped: int  # of them, treated


def relabel(
    user_ids: Sequence[str],
    cutoff_ms: Sequence[int] | npt.NDArray[np.int64],
    churn: npt.NDArray[np.float32],
    outcomes: Sequence[OutcomeLabel],
    horizon_ms: int,
) -> Relabelled:
    """The examples' churn labels with the outcomes applied (module docstring)."""
    by_user: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (user, cutoff) in enumerate(zip(user_ids, cutoff_ms, strict=True)):
        by_user[user].append((int(cutoff), i))
    for cutoffs in by_user.values():
        cutoffs.sort()
    labels = churn.astype(np.float32, copy=True)
    keep = np.ones(len(labels), dtype=bool)
    matched = changed = dropped = 0
    for outcome in outcomes:
        rows = by_user.get(outcome.user_id)
        if not rows:
            continue
        at = bisect_right(rows, (outcome.alert_ms, len(labels))) - 1
        if at < 0 or outcome.alert_ms - rows[at][0] > horizon_ms:
            continue
        i = rows[at][1]
        matched += 1
        if outcome.treated:
            dropped += keep[i]
            keep[i] = False
            continue
        label = 1.0 if outcome.stayed_away else 0.0
        changed += labels[i] != label
        labels[i] = label
    return Relabelled(labels, keep, matched, int(changed), int(dropped))


async def _read(settings: TrainerSettings) -> list[OutcomeLabel]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(settings.database_url, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT o.user_id, o.alert_at, o.outcome, EXISTS ("
                    "  SELECT 1 FROM alerts a JOIN retention_actions r ON r.alert_id = a.alert_id"
                    "  WHERE a.user_id = o.user_id AND a.kind = 'churn' AND a.event_at = o.alert_at"
                    ") AS treated FROM churn_outcomes o"
                )
            )
            return [
                OutcomeLabel(
                    r.user_id,
                    int(r.alert_at.timestamp() * 1000),
                    r.outcome == "stayed_away",
                    bool(r.treated),
                )
                for r in rows
            ]
    finally:
        await engine.dispose()


def read_outcome_labels(settings: TrainerSettings) -> list[OutcomeLabel]:
    """Every recorded churn outcome, with whether its alert was treated."""
    return asyncio.run(_read(settings))
