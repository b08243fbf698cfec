from __future__ import annotations

import math
from dataclasses import replace

import orjson
import pytest

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.scoring.alerts import (
    ALERT_SCHEMA_VERSION,
    Alert,
    AlertRules,
    alert_id,
    alert_to_json,
    evaluate,
)

VOCAB = Vocabulary()
RULES = AlertRules(
    churn_threshold=0.8,
    churn_rearm=0.6,
    churn_cooldown_s=3_600,
    anomaly_threshold=0.95,
    anomaly_cooldown_s=600,
    burst_events_per_s=20.0,
    churn_min_events=1,
    churn_min_history_s=0,
)
T0 = 1_700_000_000_000
HOUR_MS = 3_600_000


class User:
    """A user whose events arrive `gap_ms` apart, scored after each event."""

    def __init__(self, user_id: str = "u-1", gap_ms: int = 60_000) -> None:
        self.user_id = user_id
        self.gap_ms = gap_ms
        self.state: UserState | None = None
        self.ts = T0
        self.n = 0

    def event(self, at_ms: int | None = None) -> None:
        self.ts = self.ts + self.gap_ms if at_ms is None else at_ms
        self.n += 1
        event = Event(f"{self.user_id}-e{self.n}", self.user_id, self.ts, "view")
        self.state, _ = apply_event(self.state, event, VOCAB, 64)

    def score(
        self,
        churn: float = 0.1,
        anomaly: float = 0.1,
        purchase: float = 0.2,
        at_ms: int | None = None,
        rules: AlertRules = RULES,
        served_threshold: float = math.nan,
    ) -> list[Alert]:
        self.event(at_ms)
        assert self.state is not None
        given = self.state
        before = given.to_bytes()
        self.state, alerts = evaluate(
            given, self.user_id, churn, purchase, anomaly, "m-7", rules, served_threshold
        )
        # Pure: the state it was given is unchanged; the new one is returned.
        assert given.to_bytes() == before
        return alerts

    def kinds(self, **kw: float) -> list[str]:
        return [a.kind for a in self.score(**kw)]  # type: ignore[arg-type]


def test_scores_are_stored() -> None:
    user = User()
    assert user.score(churn=0.3, anomaly=0.4, purchase=0.5) == []
    assert user.state is not None
    assert (user.state.churn, user.state.purchase, user.state.anomaly) == (0.3, 0.5, 0.4)


def test_churn_alert_content() -> None:
    user = User()
    user.score()
    user.score()
    [alert] = user.score(churn=0.86)
    assert alert.kind == "churn" and alert.user_id == "u-1"
    assert alert.score == 0.86 and alert.threshold == 0.8
    assert alert.model_version == "m-7"
    assert alert.event_ids == ("u-1-e1", "u-1-e2", "u-1-e3")
    assert alert.event_ts_ms == user.ts
    assert alert.reason == "churn risk 0.86 crossed 0.80"
    assert alert.alert_id == alert_id("churn", "u-1", 0)  # the user's first churn episode
    assert user.state is not None and user.state.last_churn_alert_ms == user.ts


def test_churn_threshold_is_inclusive() -> None:
    assert User().kinds(churn=0.8) == ["churn"]
    assert User().kinds(churn=0.7999) == []


def test_churn_hysteresis_and_cooldown() -> None:
    user = User(gap_ms=2 * HOUR_MS)  # every step is past the 1 h cooldown
    assert user.kinds(churn=0.9) == ["churn"]
    # Still high: no repeat however long it stays high.
    assert user.kinds(churn=0.95) == []
    assert user.kinds(churn=0.9) == []
    # Dropping below the alert threshold but not below re-arm does not re-arm.
    assert user.kinds(churn=0.7) == []
    assert user.kinds(churn=0.9) == []
    # Below re-arm: armed again, and the cooldown has passed, so the next crossing alerts.
    assert user.kinds(churn=0.5) == []
    assert user.state is not None and user.state.churn_armed
    assert user.kinds(churn=0.85) == ["churn"]
    assert not user.state.churn_armed


def test_churn_rearmed_but_cooling_down() -> None:
    user = User(gap_ms=60_000)
    assert user.kinds(churn=0.9) == ["churn"]
    first_ms = user.ts
    assert user.kinds(churn=0.1) == []  # re-armed
    assert user.kinds(churn=0.9) == []  # within the 1 h cooldown
    assert user.state is not None and user.state.churn_armed  # stays armed while waiting
    assert user.kinds(churn=0.9, at_ms=first_ms + HOUR_MS - 1) == []
    assert user.kinds(churn=0.9, at_ms=first_ms + HOUR_MS) == ["churn"]


def test_nan_churn_neither_alerts_nor_rearms() -> None:
    user = User()
    assert user.kinds(churn=0.9) == ["churn"]
    assert user.kinds(churn=math.nan) == []
    assert user.state is not None and not user.state.churn_armed


def test_anomaly_alert_and_cooldown() -> None:
    user = User(gap_ms=60_000)
    [alert] = user.score(anomaly=0.97)
    assert alert.kind == "anomaly" and alert.threshold == 0.95
    assert alert.reason == "anomaly score 0.97 crossed 0.95"
    first_ms = user.ts
    # No hysteresis for anomalies, only the cooldown (600 s).
    assert user.kinds(anomaly=0.99) == []
    assert user.kinds(anomaly=0.99, at_ms=first_ms + 599_999) == []
    assert user.kinds(anomaly=0.99, at_ms=first_ms + 600_000) == ["anomaly"]
    assert User().kinds(anomaly=0.94) == []
    assert User().kinds(anomaly=math.nan) == []


def test_cooldown_uses_event_time_not_wall_time() -> None:
    user = User(gap_ms=1)  # events 1 ms apart, however long the test takes
    assert user.kinds(anomaly=0.99) == ["anomaly"]
    for _ in range(5):
        assert user.kinds(anomaly=0.99) == []


def test_burst_alert() -> None:
    user = User(gap_ms=20)  # 50 events/s
    kinds: list[list[str]] = [user.kinds() for _ in range(60)]
    burst_at = [i for i, k in enumerate(kinds) if k == ["burst"]]
    assert len(burst_at) == 1 and burst_at[0] > 5  # alerts once, not on the first events
    assert user.state is not None and user.state.rate_per_s > 40
    first_ms = user.state.last_burst_alert_ms
    # Cooldown is anomaly_cooldown_s; once over it, a still-running burst alerts again: one
    # slow gap drops the rate, but 31 of the last 32 events still came at a script's pace.
    assert user.kinds(at_ms=first_ms + 600_000) == ["burst"]


def test_the_spike_rule_alone_recovers_after_a_slow_gap() -> None:
    spike_only = replace(RULES, burst_sustained_events=0)
    user = User(gap_ms=20)
    kinds = [user.kinds(rules=spike_only) for _ in range(60)]  # type: ignore[arg-type]
    assert sum(k.count("burst") for k in kinds) == 1
    assert user.state is not None
    first_ms = user.state.last_burst_alert_ms
    assert user.kinds(at_ms=first_ms + 600_000, rules=spike_only) == []  # type: ignore[arg-type]
    for _ in range(40):
        user.event()
    assert user.kinds(rules=spike_only) == ["burst"]  # type: ignore[arg-type]


def test_burst_alert_content() -> None:
    user = User(gap_ms=20)
    alerts = [a for _ in range(60) for a in user.score()]
    [alert] = alerts
    assert alert.kind == "burst" and alert.threshold == 20.0 and alert.score >= 20.0
    assert alert.reason.startswith("burst of ") and alert.reason.endswith("crossed 20.0")


def test_human_never_bursts() -> None:
    user = User(gap_ms=10_000)
    assert all(user.kinds() == [] for _ in range(200))


def test_all_three_at_once() -> None:
    user = User(gap_ms=10)
    for _ in range(60):
        user.event()
    assert user.kinds(churn=0.9, anomaly=0.99) == ["churn", "anomaly", "burst"]


def test_alert_ids_are_deterministic() -> None:
    def run() -> list[str]:
        user = User(user_id="u-42", gap_ms=2 * HOUR_MS)
        ids = []
        for churn in (0.9, 0.9, 0.1, 0.9, 0.2):
            anomaly = 0.99 if churn > 0.5 else 0.1
            ids += [a.alert_id for a in user.score(churn=churn, anomaly=anomaly)]
        return ids

    first, second = run(), run()
    # churn at steps 1 and 4, anomaly at steps 1, 2 and 4
    assert first == second and len(first) == 5 and len(set(first)) == 5
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in first)
    assert alert_id("churn", "u", 0) != alert_id("anomaly", "u", 0)
    assert alert_id("churn", "u", 0) != alert_id("churn", "u2", 0)
    assert alert_id("churn", "u", 0) != alert_id("churn", "u", 1)


def test_alert_id_does_not_depend_on_how_events_were_windowed() -> None:
    """A replay scores at other events than the first run; the episode's id is the same."""
    first = User(user_id="u-7")
    first.score()
    [alert_a] = first.score(churn=0.9)  # windows [e1] [e2]: e2 triggers
    replay = User(user_id="u-7")
    replay.score()
    replay.event()
    [alert_b] = replay.score(churn=0.9)  # windows [e1] [e2 e3]: e3 triggers
    assert alert_a.event_ids[-1] == "u-7-e2" and alert_b.event_ids[-1] == "u-7-e3"
    assert alert_a.alert_id == alert_b.alert_id


def test_alert_to_json() -> None:
    user = User()
    [alert] = user.score(churn=0.9)
    record = orjson.loads(alert_to_json(alert))
    assert record == {
        "schema_version": ALERT_SCHEMA_VERSION,
        "alert_id": alert.alert_id,
        "user_id": "u-1",
        "kind": "churn",
        "score": 0.9,
        "threshold": 0.8,
        "model_version": "m-7",
        "event_ids": ["u-1-e1"],
        "event_ts_ms": user.ts,
        "reason": "churn risk 0.90 crossed 0.80",
    }
    assert ALERT_SCHEMA_VERSION == 1


def test_rules_validate_hysteresis_gap() -> None:
    with pytest.raises(ValueError):
        AlertRules(churn_threshold=0.5, churn_rearm=0.5)


def test_rules_from_settings() -> None:
    from stream.settings import Settings

    settings = Settings(
        churn_alert_threshold=0.7,
        churn_rearm_threshold=0.4,
        churn_cooldown_s=10,
        anomaly_alert_threshold=0.9,
        anomaly_cooldown_s=20,
        burst_events_per_s=5.0,
    )
    assert AlertRules.from_settings(settings) == AlertRules(0.7, 0.4, 10, 0.9, 20, 5.0)
    defaults = AlertRules.from_settings(Settings())
    assert defaults == AlertRules()


def test_the_served_versions_threshold_wins_over_the_configured_one() -> None:
    user = User(gap_ms=2 * HOUR_MS)
    assert user.kinds(churn=0.7, served_threshold=0.75) == []
    [alert] = user.score(churn=0.76, served_threshold=0.75)
    assert alert.threshold == 0.75 and alert.reason == "churn risk 0.76 crossed 0.75"
    # Re-arming keeps the configured ratio (0.6 / 0.8) to the served threshold: 0.5625.
    assert user.kinds(churn=0.57, served_threshold=0.75) == []
    assert user.state is not None and not user.state.churn_armed
    assert user.kinds(churn=0.56, served_threshold=0.75) == []
    assert user.state.churn_armed


def test_a_version_without_a_threshold_uses_the_configured_one() -> None:
    assert User().kinds(churn=0.79, served_threshold=math.nan) == []
    assert User().kinds(churn=0.8, served_threshold=math.nan) == ["churn"]


def test_a_version_that_reached_no_target_precision_raises_no_churn_alert() -> None:
    user = User(gap_ms=2 * HOUR_MS)
    assert user.kinds(churn=0.999, served_threshold=math.inf) == []
    assert user.kinds(churn=1.0, served_threshold=math.inf) == []


def test_too_little_history_gets_no_churn_alert() -> None:
    rules = AlertRules(churn_min_events=3, churn_min_history_s=86_400)
    user = User(gap_ms=12 * HOUR_MS)
    # Events 1 and 2: too few; event 3 is only 24 h after the first: enough of both.
    assert [a.kind for a in user.score(churn=0.95, rules=rules)] == []
    assert [a.kind for a in user.score(churn=0.95, rules=rules)] == []
    assert [a.kind for a in user.score(churn=0.95, rules=rules)] == ["churn"]
    # Many events within minutes are not enough history either.
    quick = User(gap_ms=60_000)
    assert all(quick.score(churn=0.95, rules=rules) == [] for _ in range(20))


def test_silence_counts_as_history_for_a_silent_re_score() -> None:
    rules = AlertRules(churn_min_events=3, churn_min_history_s=86_400)
    user = User(gap_ms=60_000)
    for _ in range(3):
        assert user.score(churn=0.95, rules=rules) == []  # 3 events within 3 minutes
    assert user.state is not None
    # Re-scored after 12 h of silence: 12 h of history, still too little.
    half_day = 12 * HOUR_MS
    _, none = evaluate(user.state, "u-1", 0.95, 0.1, 0.1, "m", rules, silent_ms=half_day)
    assert none == []
    # After a day of silence the first event is a day old: enough to judge.
    _, [alert] = evaluate(user.state, "u-1", 0.95, 0.1, 0.1, "m", rules, silent_ms=2 * half_day)
    assert alert.kind == "churn" and alert.event_ts_ms == user.state.last_ts_ms + 2 * half_day


def test_a_scripts_pace_kept_up_is_a_burst_though_never_a_spike() -> None:
    # A scraper: one page every 2 s, far below the 20 events/s spike rule.
    scraper = User("scraper-1", gap_ms=2_000)
    raised = [scraper.kinds() for _ in range(40)]
    first = next(i for i, kinds in enumerate(raised) if "burst" in kinds)
    # From the 32nd event on, 31 of the last 32 gaps (the first event has none) are fast.
    assert first == 31 and sum(k.count("burst") for k in raised) == 1
    scraper2 = User("scraper-2", gap_ms=2_000)
    alerts = [a for _ in range(32) for a in scraper2.score()]
    [burst] = [a for a in alerts if a.kind == "burst"]
    assert burst.score == 31 and burst.threshold == 28
    assert burst.reason == "31 of the last 32 events came under 5 s apart (rule: 28)"


def test_a_person_browsing_fast_now_and_then_is_no_burst() -> None:
    person = User("person-1", gap_ms=4_000)
    kinds = [person.kinds() for _ in range(20)]
    for _ in range(20):
        person.gap_ms = 30_000
        kinds.append(person.kinds())
    assert not any("burst" in k for k in kinds)


def test_burst_defaults_flag_every_bot_and_scraper_and_no_person_of_the_generator() -> None:
    """The calibration behind the defaults (docs/evaluation.md, "Bursts"), on fresh users."""
    from stream.datasets.synthetic import SyntheticConfig, generate
    from stream.scoring.alerts import sustained_fast_events

    events, truth = generate(SyntheticConfig(users=400, days=4, seed=11))
    states: dict[str, UserState] = {}
    flagged: set[str] = set()
    rules = AlertRules()
    for event in sorted(events, key=lambda e: e.ts_ms):
        state, _ = apply_event(states.get(event.user_id), event, VOCAB, 64)
        states[event.user_id] = state
        spike = state.rate_per_s >= rules.burst_events_per_s
        if spike or sustained_fast_events(state) >= rules.burst_sustained_events:
            flagged.add(event.user_id)
    scripts = {u for u, t in truth.items() if t.anomaly in ("bot", "scraper")}
    assert scripts and flagged == scripts
