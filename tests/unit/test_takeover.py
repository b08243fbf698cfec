from __future__ import annotations

import math
from dataclasses import replace

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.scoring.alerts import AlertRules, alert_id, evaluate
from stream.scoring.takeover import NewestSession, looks_like_takeover, newest_session

VOCAB = Vocabulary()
RULES = AlertRules()  # the defaults: 3 unfamiliar carts, 8 earlier events, 35 %
T0 = 1_700_000_000_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000


class Account:
    """One user's events, 1 min apart, folded into a state as the worker does."""

    def __init__(self, user_id: str = "u-1") -> None:
        self.user_id = user_id
        self.state: UserState | None = None
        self.ts = T0
        self.n = 0

    def add(
        self,
        event_type: str,
        platform: str | None,
        category: str | None = None,
        gap_ms: int = MINUTE_MS,
    ) -> UserState:
        self.ts += gap_ms
        self.n += 1
        item, price = (None, None) if category is None else (f"{category}-i{self.n}", 50.0)
        event = Event(
            f"{self.user_id}-e{self.n}",
            self.user_id,
            self.ts,
            event_type,
            item,
            category,
            price,
            None,
            platform,
        )
        self.state, _ = apply_event(self.state, event, VOCAB, 64)
        return self.state

    def owner_history(self, events: int = 12, platform: str = "web") -> None:
        """The owner browses and carts in their two favourite categories."""
        for i in range(events):
            self.add("add_to_cart" if i % 4 == 3 else "view", platform, f"c{i % 2}")

    def intruder(self, carts: int = 3, platform: str = "app", views_per_cart: int = 1) -> None:
        """Logs in and carts items of categories the owner never touched."""
        self.add("login", platform, gap_ms=HOUR_MS)
        for i in range(carts):
            for _ in range(views_per_cart):
                self.add("view", platform, f"dear{i}", gap_ms=5_000)
            self.add("add_to_cart", platform, f"dear{i}", gap_ms=3_000)

    def session(self) -> NewestSession:
        assert self.state is not None
        return newest_session(self.state.tokens)

    def flagged(self, rules: AlertRules = RULES) -> bool:
        return looks_like_takeover(
            self.session(),
            rules.takeover_min_history_events,
            rules.takeover_unfamiliar_carts,
            rules.takeover_min_share,
        )


def test_an_intruder_on_a_new_platform_carting_unfamiliar_categories_is_flagged() -> None:
    account = Account()
    account.owner_history(12)
    account.intruder(carts=3)
    session = account.session()
    assert session == NewestSession("app", 7, 12, True, 3)
    assert math.isclose(session.unfamiliar_share, 3 / 7)
    assert account.flagged()


def test_two_unfamiliar_carts_are_not_enough() -> None:
    account = Account()
    account.owner_history(12)
    account.intruder(carts=2)
    assert account.session().unfamiliar_carts == 2 and not account.flagged()


def test_a_new_user_is_never_flagged() -> None:
    # 7 earlier events: under the 8 needed, whatever the session does.
    young = Account()
    young.owner_history(7)
    young.intruder(carts=4)
    assert young.session().earlier_events == 7 and not young.flagged()
    # The same with 8.
    settled = Account()
    settled.owner_history(8)
    settled.intruder(carts=4)
    assert settled.flagged()
    # A brand-new account's first session has no earlier events at all.
    first = Account()
    first.intruder(carts=4)
    assert not first.session().platform_is_new and not first.flagged()


def test_the_owners_own_platform_is_never_a_takeover() -> None:
    account = Account()
    account.owner_history(12, platform="web")
    account.intruder(carts=4, platform="web")
    assert account.session().earlier_events == 0 and not account.flagged()


def test_a_platform_used_earlier_in_the_kept_events_is_not_new() -> None:
    account = Account()
    account.owner_history(6, platform="app")
    account.owner_history(10, platform="web")
    account.intruder(carts=4, platform="app")
    session = account.session()
    assert session.earlier_events == 16 and not session.platform_is_new
    assert not account.flagged()


def test_carts_in_familiar_categories_are_no_takeover() -> None:
    account = Account()
    account.owner_history(12)
    account.add("login", "app", gap_ms=HOUR_MS)
    for _ in range(4):
        account.add("view", "app", "c0")
        account.add("add_to_cart", "app", "c1")
    session = account.session()
    assert session.platform_is_new and session.unfamiliar_carts == 0
    assert not account.flagged()


def test_a_new_device_that_mostly_browses_is_no_takeover() -> None:
    # An owner on a new phone: three carts in new categories, among much browsing.
    account = Account()
    account.owner_history(12)
    account.intruder(carts=3, views_per_cart=4)
    session = account.session()
    assert session.unfamiliar_carts == 3 and session.unfamiliar_share < 0.35
    assert not account.flagged()


def test_an_unknown_platform_is_never_new() -> None:
    account = Account()
    account.owner_history(12)
    account.add("login", None, gap_ms=HOUR_MS)
    for i in range(4):
        account.add("add_to_cart", None, f"dear{i}")
    session = account.session()
    assert session.platform == "other" and not session.platform_is_new
    assert not account.flagged()


def test_purchases_count_and_views_do_not() -> None:
    account = Account()
    account.owner_history(12)
    account.add("login", "app", gap_ms=HOUR_MS)
    account.add("add_to_cart", "app", "dear0")
    account.add("purchase", "app", "dear0")
    account.add("view", "app", "dear1")
    account.add("purchase", "app", "dear1")
    assert account.session().unfamiliar_carts == 3 and account.flagged()


def test_zero_turns_the_rule_off() -> None:
    account = Account()
    account.owner_history(12)
    account.intruder(carts=4)
    assert account.flagged()
    assert not account.flagged(replace(RULES, takeover_unfamiliar_carts=0))


def _evaluate(account: Account, rules: AlertRules = RULES) -> list[str]:
    assert account.state is not None
    given = account.state
    before = given.to_bytes()
    account.state, alerts = evaluate(
        given, account.user_id, math.nan, math.nan, math.nan, "m-7", rules
    )
    assert given.to_bytes() == before  # pure
    return [a.alert_id for a in alerts if a.kind == "takeover"]


def test_takeover_alert_content() -> None:
    account = Account()
    account.owner_history(12)
    account.intruder(carts=4)
    assert account.state is not None
    _, alerts = evaluate(account.state, "u-1", math.nan, math.nan, math.nan, "m-7", RULES)
    [alert] = alerts
    assert alert.kind == "takeover" and alert.score == 4.0 and alert.threshold == 3.0
    assert alert.alert_id == alert_id("takeover", "u-1", 0)
    assert alert.event_ts_ms == account.ts
    assert alert.reason == (
        "session on app, a platform none of the 12 earlier events used: 4 carts/purchases "
        "in categories never seen before, 4 of its 9 events (rule: 3, 35%)"
    )


def test_takeover_cooldown_and_own_alert_memory() -> None:
    account = Account()
    account.owner_history(12)
    account.intruder(carts=3)
    [first] = _evaluate(account)
    assert account.state is not None
    first_ms = account.state.last_takeover_alert_ms
    assert first_ms == account.ts
    # Other kinds' memories are untouched, and theirs do not hold this one back.
    assert account.state.last_anomaly_alert_ms == account.state.last_burst_alert_ms == 0
    # More unfamiliar carts within the hour's cooldown: no new alert.
    account.add("add_to_cart", "app", "dear9", gap_ms=10 * MINUTE_MS)
    assert _evaluate(account) == []
    # The intruder back after the cooldown: a new episode, its id chained to the first.
    account.add("add_to_cart", "app", "dear8", gap_ms=HOUR_MS)
    [second] = _evaluate(account)
    assert second == alert_id("takeover", "u-1", first_ms) != first


def test_takeover_alert_ids_do_not_depend_on_how_events_were_windowed() -> None:
    # Scored after every event, or once at the end of the window: the same episode id.
    each = Account()
    each.owner_history(12)
    ids: list[str] = []
    each.add("login", "app", gap_ms=HOUR_MS)
    for i in range(5):
        each.add("add_to_cart", "app", f"dear{i}", gap_ms=3_000)
        ids += _evaluate(each)
    once = Account()
    once.owner_history(12)
    once.add("login", "app", gap_ms=HOUR_MS)
    for i in range(5):
        once.add("add_to_cart", "app", f"dear{i}", gap_ms=3_000)
    assert ids == _evaluate(once) == [alert_id("takeover", "u-1", 0)]


def test_takeover_defaults_flag_every_takeover_and_no_person_of_the_generator() -> None:
    """The calibration behind the defaults (docs/evaluation.md, "Takeovers"), on fresh
    users: every takeover is flagged after it started, never before, and no person is."""
    from stream.datasets.synthetic import SyntheticConfig, generate

    events, truth = generate(SyntheticConfig(users=400, days=4, seed=11))
    states: dict[str, UserState] = {}
    flagged: set[str] = set()
    early: set[str] = set()
    for event in sorted(events, key=lambda e: e.ts_ms):
        state, _ = apply_event(states.get(event.user_id), event, VOCAB, 64)
        states[event.user_id] = state
        session = newest_session(state.tokens)
        if looks_like_takeover(session, 8, 3, 0.35):
            start = truth[event.user_id].anomaly_start_ms
            (flagged if start is not None and event.ts_ms >= start else early).add(event.user_id)
    takeovers = {u for u, t in truth.items() if t.anomaly == "takeover"}
    assert takeovers and takeovers <= flagged
    assert not early
    # A hoarding bot on a new platform carts unfamiliar items too: an anomaly all the same.
    assert all(truth[u].anomaly is not None for u in flagged)


def test_takeover_rules_from_settings() -> None:
    from stream.settings import Settings

    settings = Settings(
        takeover_unfamiliar_carts=0, takeover_min_history_events=20, takeover_min_share=0.5
    )
    rules = AlertRules.from_settings(settings)
    assert (
        rules.takeover_unfamiliar_carts,
        rules.takeover_min_history_events,
        rules.takeover_min_share,
    ) == (0, 20, 0.5)
    # Off: the intruder above raises no alert at all.
    account = Account()
    account.owner_history(12)
    account.intruder(carts=4)
    assert _evaluate(account, rules) == []
    assert _evaluate(account, RULES) != []
