"""Customer-level labels on real data, and the behaviour features every scorer sees.

Two protocols, each a set of cut-offs: features look only at events before a cut-off, the
label only at the horizon after it, and customers are split into training and held-out sets
by a stable hash of their id (`trainer.labels.sequences.held_out`), so no customer is on both sides.

    churn     CDNOW-style purchase logs: one cut-off at the end of the calibration period
              (39 weeks after the first purchase in the file); churn = no purchase in the
              holdout that follows (the next 39 weeks, or what the file holds). Customers
              are those who bought in the calibration period.
    purchase  clickstreams (Taobao): cut-offs every `step` back from the end of the data,
              keeping `min_history` after its start; label = a purchase within `horizon`
              after the cut-off. Customers are those with an event before the cut-off; a
              customer appears once per cut-off, so intervals resample customers, not rows.

Every row also carries the served model's input: the customer's events before the cut-off folded
through the worker's own `apply_event` into a user state, and that state's behaviour features
at the cut-off (stream/contract/features.py), exactly what the worker would send at that time.

A clickstream's start is its 1st-percentile timestamp, so a few stray early rows (Taobao has
some) do not stretch it; a purchase log's is its first purchase day.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.features import NAMES, user_features
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
WINDOWS_MS: dict[str, int] = {
    "3h": 3 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "7d": 7 * DAY_MS,
    "28d": 28 * DAY_MS,
    "91d": 91 * DAY_MS,
}
RFM: tuple[str, ...] = ("recency_days", "age_days", "events", "purchases", "spend")
BEHAVIOUR: tuple[str, ...] = (
    *RFM,
    "purchase_days",
    "repeat_purchases",
    "purchase_span_days",
    "days_since_purchase",
    "mean_purchase_gap_days",
    "std_purchase_gap_days",
    "last_purchase_gap_days",
    "max_purchase_gap_days",
    "spend_per_purchase_day",
    *(f"events_{w}" for w in WINDOWS_MS),
    *(f"purchases_{w}" for w in WINDOWS_MS),
    "carts_1d",
    "carts_7d",
    "wishlist_7d",
    "views",
    "carts",
    "wishlist",
    "open_carts",
    "open_wishlist",
    "hours_since_open_cart",
    "active_days",
    "distinct_items",
    "distinct_categories",
    "last_event_purchase",
    "last_event_cart",
)
TYPES = ("view", "add_to_cart", "add_to_wishlist", "purchase")


@dataclass
class Cohort:
    """One row per (customer, cut-off)."""

    features: npt.NDArray[np.float64]  # (n, len(BEHAVIOUR))
    label: npt.NDArray[np.float64]  # 1 = churned / purchased within the horizon
    customers: list[str]
    cutoff_ms: npt.NDArray[np.int64]
    bgnbd_inputs: npt.NDArray[np.float64]  # (n, 3): x, t_x, T in weeks
    horizon_weeks: float
    # (n, len(features.NAMES)): from the state the worker would hold at the cut-off
    state_features: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros((0, len(NAMES)))
    )

    def __len__(self) -> int:
        return len(self.customers)

    def column(self, name: str) -> npt.NDArray[np.float64]:
        return self.features[:, BEHAVIOUR.index(name)]

    def subset(self, keep: npt.NDArray[np.bool_]) -> Cohort:
        picked = [c for c, k in zip(self.customers, keep, strict=True) if k]
        arrays = {
            f.name: getattr(self, f.name)[keep]
            for f in fields(self)
            if f.name not in ("customers", "horizon_weeks")
        }
        return Cohort(**arrays, customers=picked, horizon_weeks=self.horizon_weeks)


def by_customer(events: Iterable[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event.user_id].append(event)
    for history in grouped.values():
        history.sort(key=lambda e: e.ts_ms)
    return dict(grouped)


def _gap_stats(days: npt.NDArray[np.int64]) -> list[float]:
    gaps = np.diff(days).astype(np.float64)
    if not gaps.size:
        return [-1.0, -1.0, -1.0, -1.0]
    return [float(gaps.mean()), float(gaps.std()), float(gaps[-1]), float(gaps.max())]


def behaviour(history: Sequence[Event], cutoff_ms: int) -> tuple[list[float], list[float]]:
    """BEHAVIOUR features and BG/NBD's (x, t_x, T) in weeks, from events before the cut-off.

    BG/NBD counts purchase days after the day of the customer's first event (CDNOW's
    "repeat purchases" when that event is the first purchase).
    """
    past = [e for e in history if e.ts_ms < cutoff_ms]
    ts = np.array([e.ts_ms for e in past], dtype=np.int64)
    types = [e.event_type for e in past]
    buy = np.array([t == "purchase" for t in types])
    spend = float(sum(e.price or 0.0 for e, b in zip(past, buy, strict=True) if b))
    day = ts // DAY_MS
    purchase_days = np.unique(day[buy])
    birth = int(day[0])
    repeat = purchase_days[purchase_days > birth]
    since = (cutoff_ms - ts) / DAY_MS
    bought = {e.item_id for e in past if e.event_type == "purchase"}
    carted = {e.item_id: e.ts_ms for e in past if e.event_type == "add_to_cart"}
    wished = {e.item_id for e in past if e.event_type == "add_to_wishlist"}
    open_carts = [t for item, t in carted.items() if item not in bought]
    is_type = {t: np.array([x == t for x in types]) for t in TYPES}
    last_purchase_ms = int(ts[buy][-1]) if buy.any() else None

    def within(window: str, mask: npt.NDArray[np.bool_] | None = None) -> float:
        recent = ts >= cutoff_ms - WINDOWS_MS[window]
        return float((recent if mask is None else recent & mask).sum())

    row = [
        float(since[-1]),
        float(since[0]),
        float(len(past)),
        float(buy.sum()),
        spend,
        float(len(purchase_days)),
        float(max(len(purchase_days) - 1, 0)),
        float(purchase_days[-1] - purchase_days[0]) if len(purchase_days) else -1.0,
        (cutoff_ms - last_purchase_ms) / DAY_MS if last_purchase_ms is not None else -1.0,
        *_gap_stats(purchase_days),
        spend / len(purchase_days) if len(purchase_days) else 0.0,
        *(within(w) for w in WINDOWS_MS),
        *(within(w, buy) for w in WINDOWS_MS),
        within("1d", is_type["add_to_cart"]),
        within("7d", is_type["add_to_cart"]),
        within("7d", is_type["add_to_wishlist"]),
        float(is_type["view"].sum()),
        float(is_type["add_to_cart"].sum()),
        float(is_type["add_to_wishlist"].sum()),
        float(len(open_carts)),
        float(len(wished - bought)),
        (cutoff_ms - max(open_carts)) / HOUR_MS if open_carts else -1.0,
        float(len(np.unique(day))),
        float(len({e.item_id for e in past})),
        float(len({e.category for e in past})),
        float(types[-1] == "purchase"),
        float(types[-1] == "add_to_cart"),
    ]
    t_x = (int(repeat[-1]) - birth) / 7 if len(repeat) else 0.0
    bgnbd = [float(len(repeat)), t_x, (cutoff_ms / DAY_MS - birth) / 7]
    return row, bgnbd


class StateAt:
    """A customer's history folded through the worker's apply_event, up to each cut-off."""

    def __init__(self, history: Sequence[Event], vocab: Vocabulary, length: int) -> None:
        self.history, self.vocab, self.length = history, vocab, length
        self.state: UserState | None = None
        self.next = 0

    def features(self, cutoff_ms: int) -> list[float]:
        """Behaviour features at cutoff_ms of the events before it (cut-offs ascending)."""
        while self.next < len(self.history) and self.history[self.next].ts_ms < cutoff_ms:
            self.state, _ = apply_event(
                self.state, self.history[self.next], self.vocab, self.length
            )
            self.next += 1
        return user_features(self.state or UserState(), cutoff_ms, self.vocab)


def _cohort(
    histories: dict[str, list[Event]],
    cutoffs: Sequence[int],
    horizon_ms: int,
    label: str,
    vocab: Vocabulary | None = None,
    sequence_length: int = 64,
) -> Cohort:
    vocab = vocab or Vocabulary()
    rows, inputs, labels, customers, at, served = [], [], [], [], [], []
    for customer in sorted(histories):
        history = histories[customer]
        ts = np.array([e.ts_ms for e in history], dtype=np.int64)
        bought = np.array([e.event_type == "purchase" for e in history])
        folded = StateAt(history, vocab, sequence_length)
        for cutoff in sorted(cutoffs):
            if ts[0] >= cutoff or (label == "churn" and not bought[ts < cutoff].any()):
                continue
            ahead = (ts >= cutoff) & (ts < cutoff + horizon_ms) & bought
            row, bgnbd = behaviour(history, cutoff)
            served.append(folded.features(cutoff))
            rows.append(row)
            inputs.append(bgnbd)
            labels.append(float(not ahead.any()) if label == "churn" else float(ahead.any()))
            customers.append(customer)
            at.append(cutoff)
    return Cohort(
        features=np.array(rows, dtype=np.float64).reshape(-1, len(BEHAVIOUR)),
        label=np.array(labels, dtype=np.float64),
        customers=customers,
        cutoff_ms=np.array(at, dtype=np.int64),
        bgnbd_inputs=np.array(inputs, dtype=np.float64).reshape(-1, 3),
        horizon_weeks=horizon_ms / WEEK_MS,
        state_features=np.array(served, dtype=np.float64).reshape(-1, len(NAMES)),
    )


def _span(histories: dict[str, list[Event]], start_percentile: float) -> tuple[int, int]:
    ts = np.concatenate([[e.ts_ms for e in h] for h in histories.values()])
    return int(np.percentile(ts, start_percentile)), int(ts.max())


@dataclass(frozen=True)
class ChurnProtocol:
    calibration_weeks: int = 39
    holdout_weeks: int = 39


def churn_cohort(events: Iterable[Event], protocol: ChurnProtocol = ChurnProtocol()) -> Cohort:
    histories = by_customer(events)
    if not histories:
        raise ValueError("no events")
    start, end = _span(histories, 0.0)
    cutoff = (start // DAY_MS) * DAY_MS + protocol.calibration_weeks * WEEK_MS
    horizon = min(protocol.holdout_weeks * WEEK_MS, end + DAY_MS - cutoff)
    if horizon <= 0:
        raise ValueError(
            f"the data ends before the {protocol.calibration_weeks}-week calibration period does"
        )
    return _cohort(histories, [cutoff], horizon, "churn")


@dataclass(frozen=True)
class PurchaseProtocol:
    horizon_ms: int = DAY_MS
    step_ms: int = DAY_MS
    min_history_ms: int = 3 * DAY_MS


def purchase_cutoffs(start_ms: int, end_ms: int, protocol: PurchaseProtocol) -> list[int]:
    cutoffs = []
    cutoff = end_ms - protocol.horizon_ms
    while cutoff >= start_ms + protocol.min_history_ms:
        cutoffs.append(cutoff)
        cutoff -= protocol.step_ms
    return sorted(cutoffs)


def purchase_cohort(
    events: Iterable[Event], protocol: PurchaseProtocol = PurchaseProtocol()
) -> Cohort:
    histories = by_customer(events)
    if not histories:
        raise ValueError("no events")
    start, end = _span(histories, 1.0)
    cutoffs = purchase_cutoffs(start, end + 1, protocol)
    if not cutoffs:
        raise ValueError("the data is too short for one cut-off with its history and horizon")
    return _cohort(histories, cutoffs, protocol.horizon_ms, "purchase")
