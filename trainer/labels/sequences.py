"""Events -> model examples, built exactly as the worker builds its input.

Every sequence comes from stream.contract.state.apply_event + stack_padded: a cut-off T is the
time of one of the user's events, the state after that event is what the worker would send to
Triton, and the labels look only at the user's events after T (h = churn_horizon_ms):

    churn          the user stops within h: their last event is at most h after T, and the
                   data then shows at least h more of silence (so a quiet spell that ends is
                   not churn)
    purchase       a purchase within purchase_horizon_ms after T
    next_item      item / category token of the next event (-100 when none or missing)
    next_category

Why "stops within h" and not "no event in the next h": the latter is positive at the last
event before any long pause, mostly occasional visitors' ordinary gaps, and it never marks the
days of fading activity before a real churner leaves; on the synthetic data under half of its
positives were churners and gradient boosting on RFM features reached ~0.6 ROC-AUC. With this
definition over 90 % of the positives are the generator's churners, in their decaying phase.

A cut-off is used only where its labels are decided (T + 2h is inside the data, no censoring)
and after min_history_ms of the user's history, so the sequence shows how they behave.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from zlib import crc32

import numpy as np
import numpy.typing as npt
import torch

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event, stack_padded
from stream.contract.tokenizer import EVENT_TYPES, MASK, NONE, NUM_SPECIAL, PAD, Vocabulary

IGNORE = -100  # torch's cross-entropy ignore_index
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
VIEW, CART, PURCHASE = (
    NUM_SPECIAL + EVENT_TYPES.index(t) for t in ("view", "add_to_cart", "purchase")
)
FEATURES: tuple[str, ...] = (
    "log_events",
    "log_events_1h",
    "log_events_24h",
    "log_events_7d",
    "log_gap_prev_s",
    "log_mean_gap_s",
    "days_active",
    "purchases",
    "carts",
    "log_spend",
    "carts_24h",
    "distinct_categories",
    "item_diversity",
    "view_share",
    "platforms",
)


@dataclass(frozen=True)
class ExampleSpec:
    churn_horizon_ms: int = 3 * DAY_MS
    purchase_horizon_ms: int = 2 * DAY_MS
    sequence_length: int = 64
    cutoffs_per_user: int = 32  # one replay per user yields them all: cheap, and more data
    min_history_ms: int = DAY_MS
    seed: int = 0


@dataclass
class Examples:
    tokens: npt.NDArray[np.int64]  # (n, sequence_length, 6)
    churn: npt.NDArray[np.float32]
    purchase: npt.NDArray[np.float32]
    next_item: npt.NDArray[np.int64]
    next_category: npt.NDArray[np.int64]
    features: npt.NDArray[np.float32]  # (n, len(FEATURES)) for the RFM baselines
    cutoff_ms: npt.NDArray[np.int64]
    user_ids: list[str]

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, keep: npt.NDArray[np.bool_]) -> Examples:
        picked = [u for u, k in zip(self.user_ids, keep, strict=True) if k]
        arrays = {f.name: getattr(self, f.name)[keep] for f in fields(self) if f.name != "user_ids"}
        return Examples(**arrays, user_ids=picked)


def group_by_user(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Per user, in time order (stable for ties, so arrival order breaks them)."""
    grouped: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event.user_id].append(event)
    for user_events in grouped.values():
        user_events.sort(key=lambda e: e.ts_ms)
    return dict(grouped)


def _user_rng(seed: int, user: str) -> random.Random:
    return random.Random(seed * 1_000_003 + crc32(user.encode("utf-8", "surrogatepass")))


def replay(
    events: Sequence[Event], vocab: Vocabulary, length: int, at: set[int]
) -> tuple[dict[int, npt.NDArray[np.int32]], npt.NDArray[np.int64]]:
    """Fold the events one by one; the padded state after each index in `at`, and every
    event's own token row (from the state, so duplicates and tokenisation match the worker)."""
    state: UserState | None = None
    snapshots: dict[int, npt.NDArray[np.int32]] = {}
    rows = np.zeros((len(events), 6), dtype=np.int64)
    for i, event in enumerate(events):
        state, fresh = apply_event(state, event, vocab, length)
        if fresh:
            rows[i] = state.tokens[-1]
        if i in at:
            snapshots[i] = stack_padded([state], length)[0]
    return snapshots, rows


def _features(events: Sequence[Event], rows: npt.NDArray[np.int64], i: int) -> list[float]:
    ts = np.array([e.ts_ms for e in events[: i + 1]], dtype=np.int64)
    t = ts[-1]
    types = rows[: i + 1, 0]
    gaps = np.diff(ts[-11:]) / 1000.0
    spend = sum(e.price or 0.0 for e, k in zip(events, types, strict=False) if k == PURCHASE)
    recent_carts = int(((types == CART) & (ts > t - DAY_MS)).sum())
    return [
        float(np.log1p(i + 1)),
        float(np.log1p((ts > t - HOUR_MS).sum())),
        float(np.log1p((ts > t - DAY_MS).sum())),
        float(np.log1p((ts > t - 7 * DAY_MS).sum())),
        float(np.log1p((t - ts[-2]) / 1000.0)) if i else -1.0,
        float(np.log1p(gaps.mean())) if gaps.size else -1.0,
        (t - ts[0]) / DAY_MS,
        float((types == PURCHASE).sum()),
        float((types == CART).sum()),
        float(np.log1p(spend)),
        float(recent_carts),
        float(len({e.category for e in events[: i + 1]})),
        len({e.item_id for e in events[: i + 1]}) / (i + 1),
        float((types == VIEW).mean()),
        float(len({e.platform for e in events[: i + 1]})),
    ]


def _target(token: int) -> int:
    return IGNORE if token in (PAD, MASK, NONE) else token


def build_examples(
    by_user: Mapping[str, Sequence[Event]],
    vocab: Vocabulary,
    spec: ExampleSpec,
    data_end_ms: int | None = None,
) -> Examples:
    """Labelled examples at up to cutoffs_per_user random decided cut-offs per user."""
    if data_end_ms is None:
        data_end_ms = max(e[-1].ts_ms for e in by_user.values() if e)
    horizon = spec.churn_horizon_ms
    tokens, churn, purchase, n_item, n_cat, feats, cutoffs, users = ([] for _ in range(8))
    for user in sorted(by_user):
        events = by_user[user]
        if not events:
            continue
        first, last = events[0].ts_ms, events[-1].ts_ms
        eligible = [
            i
            for i, e in enumerate(events)
            if e.ts_ms - first >= spec.min_history_ms and e.ts_ms + 2 * horizon <= data_end_ms
        ]
        if not eligible:
            continue
        rng = _user_rng(spec.seed, user)
        picked = set(rng.sample(eligible, min(spec.cutoffs_per_user, len(eligible))))
        snapshots, rows = replay(events, vocab, spec.sequence_length, picked)
        for i in sorted(picked):
            t = events[i].ts_ms
            bought = any(
                rows[j, 0] == PURCHASE and events[j].ts_ms - t <= spec.purchase_horizon_ms
                for j in range(i + 1, len(events))
            )
            nxt = rows[i + 1] if i + 1 < len(events) else np.zeros(6, dtype=np.int64)
            tokens.append(snapshots[i])
            churn.append(float(last <= t + horizon))
            purchase.append(float(bought))
            n_item.append(_target(int(nxt[1])))
            n_cat.append(_target(int(nxt[2])))
            feats.append(_features(events, rows, i))
            cutoffs.append(t)
            users.append(user)
    length = spec.sequence_length
    return Examples(
        tokens=np.array(tokens, dtype=np.int64).reshape(-1, length, 6),
        churn=np.array(churn, dtype=np.float32),
        purchase=np.array(purchase, dtype=np.float32),
        next_item=np.array(n_item, dtype=np.int64),
        next_category=np.array(n_cat, dtype=np.int64),
        features=np.array(feats, dtype=np.float32).reshape(-1, len(FEATURES)),
        cutoff_ms=np.array(cutoffs, dtype=np.int64),
        user_ids=users,
    )


def unlabelled_sequences(
    by_user: Mapping[str, Sequence[Event]],
    vocab: Vocabulary,
    length: int,
    per_user: int = 8,
    seed: int = 0,
) -> npt.NDArray[np.int64]:
    """States at random cut-offs over the whole history, for masked-event pretraining."""
    out: list[npt.NDArray[np.int32]] = []
    for user in sorted(by_user):
        events = by_user[user]
        rng = _user_rng(seed + 1, user)
        picked = set(rng.sample(range(len(events)), min(per_user, len(events))))
        snapshots, _ = replay(events, vocab, length, picked)
        out.extend(snapshots[i] for i in sorted(picked))
    return np.array(out, dtype=np.int64).reshape(-1, length, 6)


def held_out(user: str, fraction: float, seed: int = 0) -> bool:
    """A stable per-user split: the same user is held out in every run with this seed."""
    return (crc32(f"{seed}:{user}".encode("utf-8", "surrogatepass")) % 10_000) < fraction * 10_000


def split_by_user(
    examples: Examples, fraction: float = 0.2, seed: int = 0
) -> tuple[Examples, Examples]:
    mask = np.array([held_out(u, fraction, seed) for u in examples.user_ids], dtype=bool)
    return examples.subset(~mask), examples.subset(mask)


@dataclass
class NextClicks:
    tokens: npt.NDArray[np.int64]  # state after the first t clicks of a session
    target: npt.NDArray[np.int64]  # item token of click t+1
    prefixes: list[list[int]]  # the item tokens of those t clicks, for the baselines


def next_clicks(
    sessions: Mapping[str, Sequence[Event]], vocab: Vocabulary, length: int
) -> NextClicks:
    """The session protocol: every next click of every session, from its earlier clicks."""
    tokens: list[npt.NDArray[np.int32]] = []
    targets: list[int] = []
    prefixes: list[list[int]] = []
    for key in sorted(sessions):
        events = sessions[key]
        if len(events) < 2:
            continue
        snapshots, rows = replay(events, vocab, length, set(range(len(events) - 1)))
        for i in range(len(events) - 1):
            tokens.append(snapshots[i])
            targets.append(int(rows[i + 1, 1]))
            prefixes.append([int(r) for r in rows[: i + 1, 1]])
    return NextClicks(
        tokens=np.array(tokens, dtype=np.int64).reshape(-1, length, 6),
        target=np.array(targets, dtype=np.int64),
        prefixes=prefixes,
    )


def mask_events(
    tokens: torch.Tensor, probability: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-event modelling: hide whole events (all six fields); targets are the hidden
    fields, IGNORE elsewhere. Every non-empty row gets at least its newest event masked
    with the same probability as the rest, plus a forced mask when none was drawn."""
    present = tokens[:, :, 0] != PAD
    draw = torch.rand(tokens.shape[:2], generator=generator) < probability
    chosen = draw & present
    none = ~chosen.any(dim=1)
    chosen[:, -1] |= none & present[:, -1]
    inputs = tokens.masked_fill(chosen.unsqueeze(-1), MASK)
    targets = tokens.masked_fill(~chosen.unsqueeze(-1), IGNORE)
    return inputs, targets
