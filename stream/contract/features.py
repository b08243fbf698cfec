"""A user's behaviour features at a scoring time: what the served churn and purchase scores read.

Pure and shared: the worker computes them from the state it keeps (stream/contract/state.py),
the trainer and `clickscore evaluate` from states built by folding events through the same
`apply_event`, so a model is trained, evaluated and served on the same numbers. The served
model's config declares the schema it was trained on (`FeatureSchema.version`, exported with
the model and set in config.pbtxt); the worker refuses a model declaring another one.

`now_ms` is the scoring time in event time: the user's last event for a score after events,
last event + the silence level for a silent re-score (stream/scoring/idle.py). Silence is
the strongest churn signal, so every time feature runs to `now_ms`, not to the last event.

Exact, from the state's counters: event count, first and last event, active days, the
event rate, purchases, purchase days, spend and purchase times. Windowed, from the token rows
(the last `sequence_length` events): each row's age is the sum of the gaps after it, each gap
taken at the middle of its gap bucket (GAP_EDGES_S), so windows are approximate; a window
older than the oldest row counts only the rows kept (`log_rows_span_days` says how far they
reach). Counts, times and amounts are log1p-scaled so a linear head sees them on one scale.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt
import orjson

from stream.contract.state import DAY_MS, UserState
from stream.contract.tokenizer import EVENT_TYPES, NUM_SPECIAL, OUT_OF_ORDER, Vocabulary

SCHEMA = "behaviour-v1"
HOUR_MS = 3_600_000
WINDOWS_MS: dict[str, int] = {
    "3h": 3 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "7d": 7 * DAY_MS,
    "28d": 28 * DAY_MS,
}
NAMES: tuple[str, ...] = (
    "log_silence_hours",
    "log_age_days",
    "log_span_days",
    "log_events",
    "log_active_days",
    "active_day_share",
    "log_events_per_active_day",
    "log_expected_active_days_missed",
    "log_rate_per_hour",
    "log_purchases",
    "log_purchase_days",
    "log_spend",
    "has_purchased",
    "log_days_since_purchase",
    "log_purchase_span_days",
    "log_mean_purchase_gap_days",
    "log_spend_per_purchase_day",
    "log_purchase_gaps_missed",
    *(f"log_events_{w}" for w in WINDOWS_MS),
    "log_purchases_7d",
    "log_purchases_28d",
    "log_carts_1d",
    "log_carts_kept",
    "view_share_kept",
    "log_open_carts",
    "last_event_purchase",
    "last_event_cart",
    "log_rows_span_days",
    "category_share_kept",
    "item_share_kept",
    "recent_share_3d",
    "log_mean_recent_gap_hours",
)
_TYPE = {name: NUM_SPECIAL + EVENT_TYPES.index(name) for name in EVENT_TYPES}
_RECENT_GAPS = 10


@dataclass(frozen=True)
class FeatureSchema:
    """What decides the features: their names and the vocabulary's gap buckets."""

    vocab: Vocabulary

    @property
    def names(self) -> tuple[str, ...]:
        return NAMES

    @property
    def count(self) -> int:
        return len(NAMES)

    @property
    def version(self) -> str:
        """`behaviour-v1:<count>:<hash>`: what config.pbtxt declares and the worker checks."""
        blob = orjson.dumps(
            {"schema": SCHEMA, "names": list(NAMES), "gap_edges_s": list(self.vocab.gap_edges_s)}
        )
        return f"{SCHEMA}:{len(NAMES)}:{hashlib.blake2b(blob, digest_size=6).hexdigest()}"

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "names": list(NAMES),
            "count": len(NAMES),
            "version": self.version,
        }


def gap_midpoints_ms(vocab: Vocabulary) -> npt.NDArray[np.float64]:
    """Per gap token id: the middle of its bucket in ms (0 for PAD, FIRST, OUT_OF_ORDER...)."""
    edges = [0, *vocab.gap_edges_s]
    mids = [(lo + hi) / 2 for lo, hi in pairwise(edges)]
    mids.append(edges[-1] * 1.5)  # the open last bucket
    out = np.zeros(OUT_OF_ORDER + 1 + len(mids), dtype=np.float64)
    out[OUT_OF_ORDER + 1 :] = np.array(mids) * 1000.0
    return out


def _log(x: float) -> float:
    return math.log1p(max(x, 0.0))


def user_features(state: UserState, now_ms: int, vocab: Vocabulary) -> list[float]:
    """NAMES for one user at `now_ms` (never before their last event: clamped to it)."""
    now_ms = max(now_ms, state.last_ts_ms)
    rows = state.tokens
    n = rows.shape[0]
    types = rows[:, 0].astype(np.int64)
    table = gap_midpoints_ms(vocab)
    gaps = table[np.minimum(rows[:, 4], len(table) - 1)]
    # Age of each row at now_ms: the silence plus the gaps of every later row.
    after = np.concatenate([np.cumsum(gaps[:0:-1])[::-1], [0.0]]) if n else np.zeros(0)
    age = (now_ms - state.last_ts_ms) + after

    def within(window_ms: int, kind: str | None = None) -> float:
        mask = age < window_ms
        if kind is not None:
            mask &= types == _TYPE[kind]
        return float(mask.sum())

    silence_days = (now_ms - state.last_ts_ms) / DAY_MS
    age_days = (now_ms - state.first_ts_ms) / DAY_MS if state.event_count else 0.0
    span_days = (state.last_ts_ms - state.first_ts_ms) / DAY_MS if state.event_count else 0.0
    days_seen = now_ms // DAY_MS - state.first_ts_ms // DAY_MS + 1 if state.event_count else 1
    active = max(state.active_days, 1 if state.event_count else 0)
    span_share = active / (state.last_ts_ms // DAY_MS - state.first_ts_ms // DAY_MS + 1)
    bought = state.purchase_count > 0
    since_buy = (now_ms - state.last_purchase_ms) / DAY_MS if bought else 0.0
    buy_span = (state.last_purchase_ms - state.first_purchase_ms) / DAY_MS if bought else 0.0
    buy_gap = buy_span / (state.purchase_days - 1) if state.purchase_days > 1 else 0.0
    last_buy_row = np.flatnonzero(types == _TYPE["purchase"])
    open_carts = types[last_buy_row[-1] + 1 :] if last_buy_row.size else types
    recent = gaps[max(1, n - _RECENT_GAPS) :]  # row 0 of a new user has no gap
    events_3d = within(WINDOWS_MS["3d"])
    return [
        _log(silence_days * 24),
        _log(age_days),
        _log(span_days),
        _log(state.event_count),
        _log(active),
        active / days_seen,
        _log(state.event_count / max(active, 1)),
        _log(silence_days * span_share),
        _log(state.rate_per_s * 3600),
        _log(state.purchase_count),
        _log(state.purchase_days),
        _log(state.spend),
        float(bought),
        _log(since_buy),
        _log(buy_span),
        _log(buy_gap),
        _log(state.spend / state.purchase_days) if state.purchase_days else 0.0,
        _log(since_buy / buy_gap) if buy_gap > 0 else 0.0,
        *(_log(within(w)) for w in WINDOWS_MS.values()),
        _log(within(WINDOWS_MS["7d"], "purchase")),
        _log(within(WINDOWS_MS["28d"], "purchase")),
        _log(within(WINDOWS_MS["1d"], "add_to_cart")),
        _log(float((types == _TYPE["add_to_cart"]).sum())),
        float((types == _TYPE["view"]).mean()) if n else 0.0,
        _log(float((open_carts == _TYPE["add_to_cart"]).sum())),
        float(n > 0 and types[-1] == _TYPE["purchase"]),
        float(n > 0 and types[-1] == _TYPE["add_to_cart"]),
        _log(float(age[0]) / DAY_MS) if n else 0.0,
        len(np.unique(rows[:, 2])) / n if n else 0.0,
        len(np.unique(rows[:, 1])) / n if n else 0.0,
        events_3d / n if n else 0.0,
        _log(float(recent.mean()) / HOUR_MS) if recent.size else 0.0,
    ]


def stack_features(
    states: Sequence[UserState], now_ms: Sequence[int], vocab: Vocabulary
) -> npt.NDArray[np.float32]:
    """(len(states), len(NAMES)) float32: the model input FEATURES, one row per user."""
    out = np.zeros((len(states), len(NAMES)), dtype=np.float32)
    for i, (state, now) in enumerate(zip(states, now_ms, strict=True)):
        out[i] = user_features(state, now, vocab)
    return out
