"""Behaviour features of a user state at a scoring time, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.contract.events import Event
from stream.contract.features import NAMES, FeatureSchema, stack_features, user_features
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary

VOCAB = Vocabulary()
HOUR, DAY = 3_600_000, 86_400_000
D0 = 1_700_006_400_000 - 1_700_006_400_000 % DAY  # a UTC midnight
T0 = D0 + HOUR


def fold(events: list[Event]) -> UserState:
    state: UserState | None = None
    for event in events:
        state, _ = apply_event(state, event, VOCAB, 64)
    assert state is not None
    return state


def three_events() -> UserState:
    return fold(
        [
            Event("e0", "u", T0, "view", item_id="a", price=5.0),
            Event("e1", "u", T0 + 10_000, "add_to_cart", item_id="b", price=5.0),
            Event("e2", "u", T0 + 2 * DAY, "purchase", item_id="c", price=20.0),
        ]
    )


def test_three_events_six_hours_after_the_last() -> None:
    state = three_events()
    now = T0 + 2 * DAY + 6 * HOUR
    f = dict(zip(NAMES, user_features(state, now, VOCAB), strict=True))
    log = math.log1p
    # Exact, from the counters: a view and a cart on day 0, a purchase of 20 on day 2.
    assert f["log_silence_hours"] == pytest.approx(log(6))
    assert f["log_age_days"] == pytest.approx(log(2.25))
    assert f["log_span_days"] == pytest.approx(log(2.0))
    assert f["log_events"] == pytest.approx(log(3))
    assert f["log_active_days"] == pytest.approx(log(2))
    assert f["active_day_share"] == pytest.approx(2 / 3)  # days 0..2 seen, 2 active
    assert f["log_events_per_active_day"] == pytest.approx(log(1.5))
    assert f["log_expected_active_days_missed"] == pytest.approx(log(0.25 * 2 / 3))
    # The rate: prior gap 60 s, then gaps of 10 s and 2 days less 10 s, each weighted 0.25.
    mean_gap_s = 60 + 0.25 * (10 - 60)
    mean_gap_s += 0.25 * (2 * 86_400 - 10 - mean_gap_s)
    assert f["log_rate_per_hour"] == pytest.approx(log(3600 / mean_gap_s))
    assert f["log_purchases"] == f["log_purchase_days"] == pytest.approx(log(1))
    assert f["log_spend"] == pytest.approx(log(20))
    assert f["has_purchased"] == 1.0
    assert f["log_days_since_purchase"] == pytest.approx(log(0.25))
    assert f["log_purchase_span_days"] == f["log_mean_purchase_gap_days"] == 0.0
    assert f["log_spend_per_purchase_day"] == pytest.approx(log(20))
    assert f["log_purchase_gaps_missed"] == 0.0
    # Windowed, from the token rows: ages 6 h, 2 d 6 h (the 1-3 d bucket's middle, 2 d) and
    # 10 s more (the 5-15 s bucket's middle).
    assert f["log_events_3h"] == 0.0
    assert f["log_events_1d"] == pytest.approx(log(1))
    assert f["log_events_3d"] == f["log_events_7d"] == f["log_events_28d"] == pytest.approx(log(3))
    assert f["log_purchases_7d"] == f["log_purchases_28d"] == pytest.approx(log(1))
    assert f["log_carts_1d"] == 0.0
    assert f["log_carts_kept"] == pytest.approx(log(1))
    assert f["view_share_kept"] == pytest.approx(1 / 3)
    assert f["log_open_carts"] == 0.0  # the cart came before the purchase
    assert (f["last_event_purchase"], f["last_event_cart"]) == (1.0, 0.0)
    assert f["log_rows_span_days"] == pytest.approx(log((2 * DAY + 6 * HOUR + 10_000) / DAY))
    assert f["category_share_kept"] == pytest.approx(1 / 3)  # no category: one NONE token
    assert f["item_share_kept"] == pytest.approx(1.0)
    assert f["recent_share_3d"] == pytest.approx(1.0)
    # Gaps after the first event: 10 s and 2 d.
    assert f["log_mean_recent_gap_hours"] == pytest.approx(log((10 + 2 * 86_400) / 2 / 3600))


def test_silence_moves_only_what_depends_on_the_scoring_time() -> None:
    state = three_events()
    at_last = dict(zip(NAMES, user_features(state, state.last_ts_ms, VOCAB), strict=True))
    silent = dict(zip(NAMES, user_features(state, state.last_ts_ms + 4 * DAY, VOCAB), strict=True))
    assert at_last["log_silence_hours"] == 0.0
    assert silent["log_silence_hours"] == pytest.approx(math.log1p(96))
    assert silent["log_events_1d"] == 0.0 < at_last["log_events_1d"]
    assert silent["log_events_3d"] == 0.0 and silent["log_events_7d"] == pytest.approx(
        math.log1p(3)
    )
    for name in ("log_events", "log_spend", "log_purchases", "log_active_days", "view_share_kept"):
        assert silent[name] == at_last[name], name
    # A scoring time before the last event is taken as the last event.
    assert user_features(state, state.last_ts_ms - DAY, VOCAB) == list(at_last.values())


def test_an_empty_state_and_a_batch() -> None:
    empty = user_features(UserState(), 0, VOCAB)
    assert len(empty) == len(NAMES) and all(math.isfinite(v) for v in empty)
    state = three_events()
    batch = stack_features([state, UserState()], [state.last_ts_ms, 0], VOCAB)
    assert batch.shape == (2, len(NAMES)) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], user_features(state, state.last_ts_ms, VOCAB), rtol=1e-6)


def test_the_schema_version_names_the_count_and_changes_with_the_gap_buckets() -> None:
    schema = FeatureSchema(VOCAB)
    assert schema.count == len(NAMES) == len(set(NAMES))
    assert schema.version.startswith(f"behaviour-v1:{len(NAMES)}:")
    assert schema.version == FeatureSchema(Vocabulary()).version
    other = FeatureSchema(Vocabulary(gap_edges_s=(1, 60, 3600)))
    assert other.version != schema.version
    assert schema.to_dict()["version"] == schema.version
