"""One scoring window, end to end: fold -> dead letters -> Triton -> alerts -> sinks -> table.

The order is what makes a crash at any point safe to replay:

1. Dead letters and results are written (and awaited) before the table is updated, so a
   crash before the table write replays the window from the old state and produces the
   same scores and the same alert ids, which the sinks absorb.
2. The table is written before the window's offsets are acknowledged (the caller acks when
   `process` returns), so a crash after the table write replays the window as duplicates:
   the sequence does not change twice and no alert is raised twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import Histogram

from stream.contract.events import ValidationLimits
from stream.contract.state import UserState, stack_item_hashes, stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.settings import WorkerSettings
from stream.sinks.kafka import KafkaPublisher
from stream.worker import metrics
from stream.worker.alerts import Alert, AlertRules, evaluate
from stream.worker.pseudonym import Pseudonymiser
from stream.worker.scores import Score
from stream.worker.triton_client import ModelScores
from stream.worker.window import Message, Window, fold

log = logging.getLogger(__name__)


class StateTable(Protocol):
    def load(self, key: bytes, partition: int) -> bytes | None: ...
    def put(self, key: bytes, value: bytes, partition: int) -> None: ...


class Scorer(Protocol):
    async def score(
        self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
    ) -> ModelScores: ...


class ResultSink(Protocol):
    async def write(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None: ...


def validation_limits(settings: WorkerSettings) -> ValidationLimits:
    return ValidationLimits(
        max_payload_bytes=settings.max_payload_bytes,
        max_age_s=settings.max_event_age_s,
        max_future_s=settings.max_event_future_s,
    )


def _observe(stage: Histogram, name: str, started: float) -> float:
    """Record the time since `started` under `name`; return now, the next stage's start."""
    now = time.perf_counter()
    stage.labels(name).observe(now - started)
    return now


class ScoringPipeline:
    def __init__(
        self,
        settings: WorkerSettings,
        table: StateTable,
        scorer: Scorer,
        store: ResultSink,
        publisher: KafkaPublisher,
        *,
        vocab: Vocabulary | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._table = table
        self._scorer = scorer
        self._store = store
        self._publisher = publisher
        self._vocab = vocab or Vocabulary()
        self._rules = AlertRules.from_settings(settings)
        self._limits = validation_limits(settings)
        self._clock = clock
        key = settings.pseudonymise_key
        # Outgoing records only: the table and the alert memory keep raw user ids.
        self._pseudonymiser = Pseudonymiser(key.get_secret_value().encode()) if key else None
        # The next offset to read per (topic, partition), for the consumer-lag gauge.
        self.positions: dict[tuple[str, int], int] = {}

    def _load(self, user_id: str, partition: int) -> UserState | None:
        raw = self._table.load(user_id.encode(), partition)
        return UserState.from_bytes(raw) if raw is not None else None

    async def process(self, messages: Sequence[Message]) -> None:
        stage = metrics.WINDOW_STAGE
        started = time.perf_counter()
        window = fold(
            messages,
            self._load,
            vocab=self._vocab,
            max_len=self._settings.sequence_length,
            limits=self._limits,
            now_ms=int(self._clock() * 1000),
        )
        self._record_window(messages, window)
        started = _observe(stage, "fold", started)
        await self._publisher.dead_letters(window.rejected)
        started = _observe(stage, "dead_letters", started)
        if not window.states:
            return

        users = list(window.states)
        states = [window.states[user] for user in users]
        length = self._settings.sequence_length
        model = await self._scorer.score(
            stack_padded(states, length), stack_item_hashes(states, length)
        )
        started = _observe(stage, "score", started)
        states, scores, alerts = self._results(users, states, model)
        if self._pseudonymiser is not None:
            scores = self._pseudonymiser.scores(scores)
            alerts = self._pseudonymiser.alerts(alerts)
        await asyncio.gather(
            self._publisher.results(scores, alerts), self._store.write(scores, alerts)
        )
        emitted = self._clock()
        for event in window.newest_event.values():
            metrics.EVENT_TO_SCORE.observe(max(0.0, emitted - event.ts_ms / 1000))
        metrics.SCORES_EMITTED.inc(len(scores))
        started = _observe(stage, "results", started)

        for user, state in zip(users, states, strict=True):
            self._table.put(user.encode(), state.to_bytes(), window.partitions[user])
        _observe(stage, "table", started)

    def _results(
        self, users: list[str], states: list[UserState], model: ModelScores
    ) -> tuple[list[UserState], list[Score], list[Alert]]:
        """Each user's state with its scores and alert memory, their scores and alerts."""
        scored_at_ms = int(self._clock() * 1000)
        scored: list[UserState] = []
        scores: list[Score] = []
        alerts: list[Alert] = []
        for i, (user, before) in enumerate(zip(users, states, strict=True)):
            churn, purchase = float(model.churn[i]), float(model.purchase[i])
            anomaly, version = float(model.anomaly[i]), model.model_versions[i]
            state, raised = evaluate(before, user, churn, purchase, anomaly, version, self._rules)
            has_next = i < len(model.next_items)
            scored.append(state)
            alerts += raised
            scores.append(
                Score(
                    user_id=user,
                    churn_risk=churn,
                    purchase_intent=purchase,
                    anomaly=anomaly,
                    model_version=version,
                    event_count=state.event_count,
                    last_event_id=state.last_event_ids[-1] if state.last_event_ids else "",
                    last_event_ts_ms=state.last_ts_ms,
                    scored_at_ms=scored_at_ms,
                    next_items=tuple(model.next_items[i]) if has_next else (),
                    next_purchase=float(model.next_purchase[i]) if has_next else math.nan,
                )
            )
        for alert in alerts:
            metrics.ALERTS.labels(alert.kind).inc()
        return scored, scores, alerts

    def _record_window(self, messages: Sequence[Message], window: Window) -> None:
        metrics.EVENTS_CONSUMED.inc(len(messages))
        for message in messages:
            where = (message.topic, message.partition)
            self.positions[where] = max(self.positions.get(where, 0), message.offset + 1)
        metrics.EVENTS_DUPLICATE.inc(window.duplicates)
        metrics.WINDOW_EVENTS.observe(len(messages))
        metrics.WINDOW_USERS.observe(len(window.states))
        for message, rejection in window.rejected:
            metrics.DEAD_LETTERS.labels(rejection.reason).inc()
            log.warning(
                "event rejected to the dead-letter topic",
                extra={
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "reason": rejection.reason,
                    "detail": rejection.detail,
                },
            )
