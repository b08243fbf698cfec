"""Alert rules over a user's fresh scores. Pure: the alert memory lives in `UserState`, and
`evaluate` returns an updated copy of it rather than changing the one it is given.

Every clock here is event time (`state.last_ts_ms`), never the wall clock, so replaying a topic
raises the same alerts.

An alert's id names the episode, not the event that happened to trigger it: it hashes the
kind, the user and the event time of that user's previous alert of this kind (0 for the
first). A worker that crashes after writing an alert but before saving the user's state
replays from the old state, maybe in windows cut differently so that another event
triggers it, and still computes the same id, so the sinks' insert-if-absent holds.

Alert record on the alerts topic (`alert_to_json`), schema_version 1:

    schema_version  1
    alert_id        32 hex chars, blake2b("{kind}|{user_id}|{previous alert's event time}")
    user_id         str
    kind            "churn" | "anomaly" | "burst" | "takeover"
    score           churn risk, anomaly score, events/s or fast events for a burst, or
                    unfamiliar carts for a takeover
    threshold       the rule's threshold that was crossed
    model_version   str, the model that produced the score
    event_ids       up to 3 most recent event ids, oldest first; the last one triggered it
    event_ts_ms     event time of the user's newest event
    reason          short human text, e.g. "churn risk 0.86 crossed 0.80"
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from hashlib import blake2b
from typing import TYPE_CHECKING

import orjson

from stream.contract.state import UserState
from stream.contract.tokenizer import FIELDS, GAP_EDGES_S, OUT_OF_ORDER
from stream.scoring.takeover import looks_like_takeover, newest_session

if TYPE_CHECKING:
    from stream.settings import WorkerSettings

ALERT_SCHEMA_VERSION = 1
# The sustained-burst rule: gap tokens of the last SUSTAINED_WINDOW events under FAST_GAP_S
# (stream/contract/tokenizer.py: OUT_OF_ORDER + 1 + the gap's bucket index; 5 s is an edge).
SUSTAINED_WINDOW = 32
FAST_GAP_S = 5
GAP_FIELD = FIELDS.index("gap_bucket")
_FAST_GAP_TOKENS = range(OUT_OF_ORDER + 1, OUT_OF_ORDER + 2 + GAP_EDGES_S.index(FAST_GAP_S))
CHURN = "churn"
ANOMALY = "anomaly"
BURST = "burst"
TAKEOVER = "takeover"


@dataclass(frozen=True)
class AlertRules:
    churn_threshold: float = 0.8
    churn_rearm: float = 0.6
    churn_cooldown_s: int = 86_400
    anomaly_threshold: float = 0.95
    anomaly_cooldown_s: int = 3_600
    burst_events_per_s: float = 20.0
    burst_sustained_events: int = 28  # of the last SUSTAINED_WINDOW; 0 turns the rule off
    # The takeover rule (stream/scoring/takeover.py); 0 unfamiliar carts turns it off.
    takeover_unfamiliar_carts: int = 3
    takeover_min_history_events: int = 8
    takeover_min_share: float = 0.35
    # Too little history to judge: the model's churn examples start after a day of history.
    churn_min_events: int = 3
    churn_min_history_s: int = 86_400

    def __post_init__(self) -> None:
        # Without the gap a score hovering at the threshold would alert on every cooldown.
        if self.churn_rearm >= self.churn_threshold:
            raise ValueError("churn_rearm must be below churn_threshold")

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> AlertRules:
        return cls(
            churn_threshold=settings.churn_alert_threshold,
            churn_rearm=settings.churn_rearm_threshold,
            churn_cooldown_s=settings.churn_cooldown_s,
            anomaly_threshold=settings.anomaly_alert_threshold,
            anomaly_cooldown_s=settings.anomaly_cooldown_s,
            burst_events_per_s=settings.burst_events_per_s,
            burst_sustained_events=settings.burst_sustained_events,
            takeover_unfamiliar_carts=settings.takeover_unfamiliar_carts,
            takeover_min_history_events=settings.takeover_min_history_events,
            takeover_min_share=settings.takeover_min_share,
            churn_min_events=settings.churn_min_events,
            churn_min_history_s=settings.churn_min_history_s,
        )

    def churn_levels(self, served_threshold: float) -> tuple[float, float]:
        """(alert, re-arm) levels for a score from a version that carries `served_threshold`.

        The served version's threshold, picked by the trainer on validation data for the
        target precision, wins; NaN (a version without one) falls back to churn_threshold.
        The re-arm level keeps the configured ratio to the alert level.
        """
        if math.isnan(served_threshold):
            return self.churn_threshold, self.churn_rearm
        return served_threshold, served_threshold * self.churn_rearm / self.churn_threshold

    def anomaly_level(self, served_threshold: float) -> float:
        """The anomaly alert level for a score from a version that carries `served_threshold`:
        the version's own (picked per user for the target precision; infinity when none
        reached it, so the model raises no anomaly alert), or anomaly_threshold when it
        carries none (NaN)."""
        return self.anomaly_threshold if math.isnan(served_threshold) else served_threshold

    def enough_history(self, state: UserState, now_ms: int) -> bool:
        """churn_min_events events, and churn_min_history_s from the first event to the
        scoring time: a silent re-score's silence is history observed too (a user seen on
        one day and silent for three has three days of history)."""
        return (
            state.event_count >= self.churn_min_events
            and now_ms - state.first_ts_ms >= self.churn_min_history_s * 1000
        )


@dataclass(frozen=True)
class Alert:
    alert_id: str
    user_id: str
    kind: str
    score: float
    threshold: float
    model_version: str
    event_ids: tuple[str, ...]
    event_ts_ms: int
    reason: str


def alert_id(kind: str, user_id: str, previous_alert_ms: int) -> str:
    key = f"{kind}|{user_id}|{previous_alert_ms}".encode("utf-8", "surrogatepass")
    return blake2b(key, digest_size=16).hexdigest()


def _cooled_down(last_alert_ms: int, now_ms: int, cooldown_s: int) -> bool:
    return last_alert_ms == 0 or now_ms - last_alert_ms >= cooldown_s * 1000


def evaluate(
    state: UserState,
    user_id: str,
    churn: float,
    purchase: float,
    anomaly: float,
    model_version: str,
    rules: AlertRules,
    churn_threshold: float = math.nan,
    silent_ms: int = 0,
    anomaly_threshold: float = math.nan,
) -> tuple[UserState, list[Alert]]:
    """The state with these scores and its updated alert memory, and the alerts to emit.

    `state` itself is left as it was.

    churn    alerts when >= the served version's churn_threshold (rules.churn_threshold when
             it carries none, NaN), armed, churn_cooldown_s passed and the user has enough
             history (churn_min_events events, churn_min_history_s from the first event to
             the scoring time, a silent re-score's silence included); it then stays
             disarmed until the risk falls below the re-arm level (hysteresis)
    anomaly  alerts when >= the served version's anomaly_threshold (rules.anomaly_threshold
             when it carries none, NaN; never when it is infinity: no threshold reached the
             target precision) and anomaly_cooldown_s passed
    burst    alerts when state.rate_per_s >= burst_events_per_s (a spike), or when at least
             burst_sustained_events of the last 32 events came under 5 s apart (a script's
             pace kept up: bots and scrapers); shares anomaly_cooldown_s
    takeover alerts when the newest session is on a platform none of the user's earlier kept
             events used (at least takeover_min_history_events of them) and holds at least
             takeover_unfamiliar_carts carts/purchases in categories they never touched,
             at least takeover_min_share of its events (stream/scoring/takeover.py); shares
             anomaly_cooldown_s, with its own last-alert time
    NaN scores never alert and never re-arm.

    silent_ms > 0: a re-score of a user silent for that long since their last event
    (stream/scoring/idle.py). The clock is then last event + silent_ms, only the churn rule
    applies, the anomaly score of their last event is kept, and the state remembers the
    silence it was scored at (`silence_scored_ms`), so that a worker rebuilding the silent
    index after a restart or rebalance does not score that level again.
    """
    silence_scored_ms = state.silence_scored_ms
    if silent_ms:
        anomaly = state.anomaly
        silence_scored_ms = max(silence_scored_ms, silent_ms)
    state = replace(
        state,
        churn=churn,
        purchase=purchase,
        anomaly=anomaly,
        silence_scored_ms=silence_scored_ms,
    )
    now_ms = state.last_ts_ms + silent_ms
    event_ids = tuple(state.last_event_ids)
    alerts: list[Alert] = []

    def emit(kind: str, previous_ms: int, score: float, threshold: float, reason: str) -> None:
        alerts.append(
            Alert(
                alert_id=alert_id(kind, user_id, previous_ms),
                user_id=user_id,
                kind=kind,
                score=score,
                threshold=threshold,
                model_version=model_version,
                event_ids=event_ids,
                event_ts_ms=now_ms,
                reason=reason,
            )
        )

    alert_at, rearm_below = rules.churn_levels(churn_threshold)
    if not math.isnan(churn):
        if not state.churn_armed:
            state.churn_armed = churn < rearm_below
        elif (
            churn >= alert_at
            and rules.enough_history(state, now_ms)
            and _cooled_down(state.last_churn_alert_ms, now_ms, rules.churn_cooldown_s)
        ):
            threshold = alert_at
            emit(
                CHURN,
                state.last_churn_alert_ms,
                churn,
                threshold,
                f"churn risk {churn:.2f} crossed {threshold:.2f}"
                + (f" after {_duration(silent_ms)} of silence" if silent_ms else ""),
            )
            state.churn_armed = False
            state.last_churn_alert_ms = now_ms

    if silent_ms:
        return state, alerts
    # NaN >= x is False, so an unscored anomaly never alerts.
    anomaly_at = rules.anomaly_level(anomaly_threshold)
    if (
        math.isfinite(anomaly_at)
        and anomaly >= anomaly_at
        and _cooled_down(state.last_anomaly_alert_ms, now_ms, rules.anomaly_cooldown_s)
    ):
        threshold = anomaly_at
        emit(
            ANOMALY,
            state.last_anomaly_alert_ms,
            anomaly,
            threshold,
            f"anomaly score {anomaly:.2f} crossed {threshold:.2f}",
        )
        state.last_anomaly_alert_ms = now_ms

    rate = state.rate_per_s
    fast = sustained_fast_events(state)
    spike = rate >= rules.burst_events_per_s
    sustained = 0 < rules.burst_sustained_events <= fast
    if (spike or sustained) and _cooled_down(
        state.last_burst_alert_ms, now_ms, rules.anomaly_cooldown_s
    ):
        if spike:
            score, threshold = rate, rules.burst_events_per_s
            reason = f"burst of {rate:.1f} events/s crossed {threshold:.1f}"
        else:
            score, threshold = float(fast), float(rules.burst_sustained_events)
            reason = (
                f"{fast} of the last {SUSTAINED_WINDOW} events came under "
                f"{FAST_GAP_S} s apart (rule: {rules.burst_sustained_events})"
            )
        emit(BURST, state.last_burst_alert_ms, score, threshold, reason)
        state.last_burst_alert_ms = now_ms

    if rules.takeover_unfamiliar_carts > 0:
        session = newest_session(state.tokens)
        if looks_like_takeover(
            session,
            rules.takeover_min_history_events,
            rules.takeover_unfamiliar_carts,
            rules.takeover_min_share,
        ) and _cooled_down(state.last_takeover_alert_ms, now_ms, rules.anomaly_cooldown_s):
            emit(
                TAKEOVER,
                state.last_takeover_alert_ms,
                float(session.unfamiliar_carts),
                float(rules.takeover_unfamiliar_carts),
                f"session on {session.platform}, a platform none of the "
                f"{session.earlier_events} earlier events used: {session.unfamiliar_carts} "
                f"carts/purchases in categories never seen before, "
                f"{session.unfamiliar_carts} of its {session.events} events "
                f"(rule: {rules.takeover_unfamiliar_carts}, "
                f"{rules.takeover_min_share:.0%})",
            )
            state.last_takeover_alert_ms = now_ms

    return state, alerts


def sustained_fast_events(state: UserState) -> int:
    """Of the user's last SUSTAINED_WINDOW events, how many came under FAST_GAP_S after the
    one before (0 until there are that many): a script keeps this up, a person does not."""
    gaps = state.tokens[-SUSTAINED_WINDOW:, GAP_FIELD]
    if len(gaps) < SUSTAINED_WINDOW:
        return 0
    return int(((gaps >= _FAST_GAP_TOKENS[0]) & (gaps <= _FAST_GAP_TOKENS[-1])).sum())


def _duration(ms: int) -> str:
    hours = ms / 3_600_000
    return f"{hours / 24:.1f} d" if hours >= 24 else f"{hours:.1f} h"


def alert_to_json(alert: Alert) -> bytes:
    """The alerts-topic record; see the module docstring for the schema."""
    return orjson.dumps({"schema_version": ALERT_SCHEMA_VERSION, **asdict(alert)})
