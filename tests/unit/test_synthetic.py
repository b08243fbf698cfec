"""The synthetic clickstream: deterministic, realistic shapes, labels that match the events."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

from stream.contract.events import Event, ValidationLimits, event_to_json, parse_event
from stream.datasets.synthetic import (
    DAY_MS,
    SyntheticConfig,
    UserTruth,
    generate,
    read_jsonl,
    read_truth,
    write_jsonl,
    write_truth,
)

CONFIG = SyntheticConfig(users=400, days=14, seed=3)


@pytest.fixture(scope="module")
def data() -> tuple[list[Event], dict[str, UserTruth]]:
    return generate(CONFIG)


@pytest.fixture(scope="module")
def by_user(data: tuple[list[Event], dict[str, UserTruth]]) -> dict[str, list[Event]]:
    users: dict[str, list[Event]] = defaultdict(list)
    for event in data[0]:
        users[event.user_id].append(event)
    return users


def _of(truth: dict[str, UserTruth], persona: str) -> list[UserTruth]:
    return [t for t in truth.values() if t.persona == persona]


def _after(events: list[Event], start_ms: int | None) -> list[Event]:
    assert start_ms is not None
    return [e for e in events if e.ts_ms >= start_ms]


def test_same_seed_same_events_other_seed_other_events() -> None:
    small = SyntheticConfig(users=30, days=3, seed=11)
    assert generate(small) == generate(small)
    assert generate(small)[0] != generate(SyntheticConfig(users=30, days=3, seed=12))[0]


def test_sorted_unique_ids_inside_the_period(
    data: tuple[list[Event], dict[str, UserTruth]],
) -> None:
    events, _ = data
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    assert len({e.event_id for e in events}) == len(events)
    assert all(CONFIG.start_ms <= e.ts_ms < CONFIG.end_ms for e in events)


def test_every_event_passes_the_contract(data: tuple[list[Event], dict[str, UserTruth]]) -> None:
    limits = ValidationLimits(max_age_s=365 * 86_400)
    for event in data[0]:
        assert parse_event(event_to_json(event), CONFIG.end_ms, limits) == event


def test_personas_in_the_configured_proportions(
    data: tuple[list[Event], dict[str, UserTruth]],
) -> None:
    counts = Counter(t.persona for t in data[1].values())
    assert len(data[1]) == CONFIG.users
    for persona, rate in CONFIG.persona_rates.items():
        assert abs(counts[persona] - rate * CONFIG.users) <= 2, persona
    assert counts["regular"] >= 0.4 * CONFIG.users


def test_every_kind_of_event_occurs(data: tuple[list[Event], dict[str, UserTruth]]) -> None:
    kinds = Counter(e.event_type for e in data[0])
    for kind in ("view", "search", "click", "add_to_cart", "remove_from_cart", "purchase"):
        assert kinds[kind] > 0, kind
    for kind in ("login", "logout", "add_to_wishlist"):
        assert kinds[kind] > 0, kind
    assert kinds["view"] > kinds["add_to_cart"] > kinds["purchase"]  # a funnel


def test_humans_visit_often_and_pause_seconds_to_minutes(
    data: tuple[list[Event], dict[str, UserTruth]], by_user: dict[str, list[Event]]
) -> None:
    regulars = _of(data[1], "regular")
    visits = sorted(len({e.session_id for e in by_user[t.user_id]}) for t in regulars)
    assert visits[0] >= 1 and visits[len(visits) // 2] >= 8
    in_session = [
        b.ts_ms - a.ts_ms
        for truth in regulars
        for a, b in pairwise(by_user[truth.user_id])
        if a.session_id == b.session_id and b.event_type in ("view", "search", "click")
    ]
    assert min(in_session) >= 1_000 and max(in_session) <= 600_000
    assert 5_000 < sorted(in_session)[len(in_session) // 2] < 60_000


def test_churners_fade_then_stop(
    data: tuple[list[Event], dict[str, UserTruth]], by_user: dict[str, list[Event]]
) -> None:
    early = late = 0
    for truth in _of(data[1], "churner"):
        assert truth.churn_ms is not None
        events = by_user[truth.user_id]
        assert all(e.ts_ms < truth.churn_ms for e in events)
        middle = (CONFIG.start_ms + truth.churn_ms) // 2
        early += sum(e.ts_ms < middle for e in events)
        late += sum(e.ts_ms >= middle for e in events)
    assert early > 1.5 * late


def test_intenders_cart_more_and_buy(
    data: tuple[list[Event], dict[str, UserTruth]], by_user: dict[str, list[Event]]
) -> None:
    intenders = _of(data[1], "intender")
    cutoff = CONFIG.end_ms - 3 * DAY_MS
    ramp_carts = ramp_days = earlier_carts = earlier_days = 0.0
    for truth in intenders:
        assert truth.purchase_ms is not None
        bought = [e for e in by_user[truth.user_id] if e.ts_ms == truth.purchase_ms]
        assert [e.event_type for e in bought] == ["purchase"]
        ramp_start = truth.purchase_ms - 5 * DAY_MS
        carts = [e.ts_ms for e in by_user[truth.user_id] if e.event_type == "add_to_cart"]
        ramp_carts += sum(ramp_start <= t < truth.purchase_ms for t in carts)
        earlier_carts += sum(t < ramp_start for t in carts)
        ramp_days += 5
        earlier_days += max(0, ramp_start - CONFIG.start_ms) / DAY_MS
    # Some buy after a late cutoff, some before it: both labels exist.
    after = sum(t.purchase_ms is not None and t.purchase_ms > cutoff for t in intenders)
    assert 0 < after < len(intenders)
    assert ramp_carts / ramp_days > 2 * earlier_carts / earlier_days


def test_bots_fire_machine_regular_bursts(
    data: tuple[list[Event], dict[str, UserTruth]], by_user: dict[str, list[Event]]
) -> None:
    bots = _of(data[1], "bot")
    assert bots
    for truth in bots:
        assert truth.anomaly == "bot"
        events = _after(by_user[truth.user_id], truth.anomaly_start_ms)
        assert events[0].ts_ms == truth.anomaly_start_ms
        gaps = Counter(b.ts_ms - a.ts_ms for a, b in pairwise(events))
        interval, count = gaps.most_common(1)[0]
        assert interval <= 1_000 and count >= 0.95 * len(events) - 10


def test_scrapers_view_many_items_and_never_cart(
    data: tuple[list[Event], dict[str, UserTruth]], by_user: dict[str, list[Event]]
) -> None:
    for truth in _of(data[1], "scraper"):
        before = [e for e in by_user[truth.user_id] if e.ts_ms < (truth.anomaly_start_ms or 0)]
        events = _after(by_user[truth.user_id], truth.anomaly_start_ms)
        assert {e.event_type for e in events} == {"view"}
        items = {e.item_id for e in events}
        assert len(items) >= 400 and len(items) > 2 * len({e.item_id for e in before})
        assert len(items) >= 0.95 * len(events)  # each item once: paging, not shopping


def test_takeovers_switch_platform_categories_and_price(
    data: tuple[list[Event], dict[str, UserTruth]], by_user: dict[str, list[Event]]
) -> None:
    dearer: list[float] = []  # per account: mean cart after / median price viewed before
    for truth in _of(data[1], "takeover"):
        assert truth.anomaly_start_ms is not None
        events = by_user[truth.user_id]
        before = [e for e in events if e.ts_ms < truth.anomaly_start_ms]
        after = _after(events, truth.anomaly_start_ms)
        assert after[0].event_type == "login"
        main = Counter(e.platform for e in before).most_common(1)[0][0]
        assert main not in {e.platform for e in after}
        favourite = Counter(e.category for e in before if e.category).most_common(1)[0][0]
        assert favourite not in {e.category for e in after}
        viewed = sorted(e.price for e in before if e.price is not None)
        carted = [e.price or 0 for e in after if e.event_type == "add_to_cart"]
        dearer.append(sum(carted) / len(carted) / viewed[len(viewed) // 2])
    # Most intruders cart far dearer items than the owner browses (an owner of luxury
    # favourites may not be outbid).
    assert sorted(dearer)[len(dearer) // 2] > 2


def test_files_round_trip(tmp_path: Path) -> None:
    events, truth = generate(SyntheticConfig(users=20, days=2, seed=5))
    write_jsonl(events, tmp_path / "events.jsonl")
    write_truth(truth, tmp_path / "truth.json")
    assert list(read_jsonl(tmp_path / "events.jsonl")) == events
    assert read_truth(tmp_path / "truth.json") == truth
