"""One scoring window, end to end: fold -> dead letters -> Triton -> alerts -> sinks -> table.

The order is what makes a crash at any point safe to replay:

1. Dead letters and results are written (and awaited) before the table is updated, so a
   crash before the table write replays the window from the old state and produces the
   same scores and the same alert ids, which the sinks absorb.
2. The table is written before the window's offsets are acknowledged (the caller acks when
   `process` returns), so a crash after the table write replays the window as messages the
   states already applied (by offset): the sequence does not change twice and no alert is
   raised twice.

A window that fails as a whole for a reason retrying cannot fix is processed again one
message at a time (`process_isolated`): the message that fails alone goes to the dead-letter
topic as `processing_error` and every other message is processed, so no message can stop the
worker or be read again forever.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import Histogram

from stream.contract.drift import Reference
from stream.contract.events import Event, Rejection, ValidationLimits
from stream.contract.features import stack_features
from stream.contract.state import UserState, stack_item_hashes, stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.retry import Stopping, retry_forever, summary
from stream.scoring.alerts import Alert, AlertRules, evaluate
from stream.scoring.drift import DriftMonitor
from stream.scoring.idle import (
    Due,
    IdleIndex,
    IdlePolicy,
    silence_item_hashes,
    silence_tokens,
)
from stream.scoring.outcomes import WindowOutcomes, window_outcomes
from stream.scoring.pseudonym import Pseudonymiser
from stream.scoring.rebuild import IndexRebuilder
from stream.scoring.scores import EVENT, SILENCE, Score
from stream.settings import WorkerSettings
from stream.sinks.kafka import KafkaPublisher
from stream.worker import metrics, quality
from stream.worker.metrics import Health
from stream.worker.triton_client import ModelScores
from stream.worker.window import MODEL_REJECTED, PROCESSING_ERROR, Message, Window, fold

log = logging.getLogger(__name__)

DEAD_LETTER = "dead-letter topic"  # the health component when dead letters are refused


class StateTable(Protocol):
    def load(self, key: bytes, partition: int) -> bytes | None: ...
    def put(self, key: bytes, value: bytes, partition: int) -> None: ...
    def stored(self) -> Iterable[tuple[bytes, bytes]]: ...


class Scorer(Protocol):
    async def score(
        self, tokens: npt.NDArray[np.int32], item_hashes: npt.NDArray[np.int64] | None = None
    ) -> ModelScores: ...


class FeatureScorer(Scorer, Protocol):
    """A scorer whose model may take behaviour features (TritonScorer): `takes_features`
    says whether it does, once started."""

    takes_features: bool

    async def score(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64] | None = None,
        features: npt.NDArray[np.float32] | None = None,
    ) -> ModelScores: ...


class ResultSink(Protocol):
    async def write(self, scores: Sequence[Score], alerts: Sequence[Alert]) -> None: ...


class OutcomeSink(Protocol):
    async def write(self, outcomes: WindowOutcomes) -> None: ...


def validation_limits(settings: WorkerSettings) -> ValidationLimits:
    return ValidationLimits(
        max_payload_bytes=settings.max_payload_bytes,
        max_age_s=settings.max_event_age_s,
        max_future_s=settings.max_event_future_s,
        max_batch_events=settings.max_batch_events,
    )


def _rows(keep: list[int], *columns: list[Any]) -> tuple[list[Any], ...]:
    """The rows `keep` of each of these parallel columns, in that order."""
    return tuple([column[i] for i in keep] for column in columns)


def _observe(stage: Histogram, name: str, started: float) -> float:
    """Record the time since `started` under `name`; return now, the next stage's start."""
    now = time.perf_counter()
    stage.labels(name).observe(now - started)
    return now


def observe_emitted(
    scores: Sequence[Score], newest_event: Mapping[str, Event], emitted_s: float
) -> None:
    """Event-to-score latency of event-triggered scores, from the user's newest event of the
    window; due-to-emitted delay of silent re-scores, from last event + silence (event time).

    A silent re-score carries the user's last event, hours or days old: counted as latency
    it would read as a pipeline that far behind.
    """
    silent = 0
    for score in scores:
        if score.trigger == EVENT:
            event = newest_event.get(score.user_id)
            if event is not None:
                metrics.EVENT_TO_SCORE.observe(max(0.0, emitted_s - event.ts_ms / 1000))
            continue
        silent += 1
        due_s = (score.last_event_ts_ms + score.silence_ms) / 1000
        metrics.SILENT_RESCORE_DELAY.observe(max(0.0, emitted_s - due_s))
    metrics.SILENT_RESCORED.inc(silent)


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
        health: Health | None = None,
        stop: asyncio.Event | None = None,
        reference_of: Callable[[str], Reference | None] | None = None,
        outcomes: OutcomeSink | None = None,
    ) -> None:
        self._health = health or Health()
        self._stop = stop
        self._settings = settings
        self._table = table
        self._scorer = scorer
        self._store = store
        self._outcomes = outcomes  # churn and purchase outcomes (stream/scoring/outcomes.py)
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
        self.idle = IdleIndex(
            IdlePolicy(
                idle_s=settings.silent_rescore_after_s,
                max_idle_s=settings.silent_rescore_max_s,
                max_users_per_pass=settings.silent_rescore_max_users,
            )
        )
        metrics.SILENT_DUE.set_function(self._silent_due)
        # The table tells it of each assignment (stream/worker/tables.py, on_assignment).
        self.silent_index = IndexRebuilder(
            self.idle, table.stored, observe=metrics.SILENT_INDEX_REBUILD.observe
        )
        # Drift of what is served against each version's reference (stream/worker/quality.py).
        self.drift = DriftMonitor(
            reference_of or quality.ReferenceFiles(settings.model_repo / settings.triton_model),
            window_s=settings.drift_window_s,
            min_count=settings.drift_min_count,
        )
        quality.COLLECTOR.watch(self.drift, clock)

    def _silent_due(self) -> float:
        """The due gauge, read at each scrape by the metrics thread while the event loop may
        be changing the index: a count that met a change half-way is taken again."""
        for _ in range(3):
            try:
                return float(self.idle.pending())
            except (RuntimeError, IndexError):  # a dict or heap changed under the walk
                continue
        return math.nan

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
        partitions = [window.partitions[user] for user in users]
        for user, state, partition in zip(users, states, partitions, strict=True):
            self.idle.touch(partition, user, state.last_ts_ms)
        # Users gone quiet in these partitions ride in the same Triton call (idle.py); those
        # among this window's own users (their events came late) go after its table writes.
        silent, later = self._due_silent(sorted(set(partitions)), window.states)
        length = self._settings.sequence_length
        tokens = stack_padded(states, length)
        item_hashes = stack_item_hashes(states, length)
        if silent:
            silent_states = [state for _, _, state in silent]
            elapsed = [entry.elapsed_ms(self.idle.policy) for _, entry, _ in silent]
            tokens = np.concatenate(
                [tokens, silence_tokens(silent_states, elapsed, self._vocab, length)]
            )
            item_hashes = np.concatenate([item_hashes, silence_item_hashes(silent_states, length)])
            users += [entry.user_id for _, entry, _ in silent]
            states += silent_states
            partitions += [partition for partition, _, _ in silent]
        silent_ms = [0] * len(window.states)
        silent_ms += [entry.elapsed_ms(self.idle.policy) for _, entry, _ in silent]
        model, features = await self._score(tokens, item_hashes, states, silent_ms)
        started = _observe(stage, "score", started)
        keep = await self._dead_letter_refused(window, users, model)
        if len(keep) < len(users):
            users, states, partitions, silent_ms = _rows(keep, users, states, partitions, silent_ms)
            model = model.rows(keep)
            features = None if features is None else features[keep]
            if not users:
                return
        states, scores, alerts = self._results(users, states, model, silent_ms)
        outcomes = window_outcomes(
            window.returns,
            window.purchases,
            window.before_ms,
            scores,
            self._settings.churn_horizon_s * 1000,
        )
        await self._emit(scores, alerts, outcomes)
        self._observe_drift(model, silent_ms, features)  # once emitted: a retry counts once
        observe_emitted(scores, window.newest_event, self._clock())
        metrics.SCORES_EMITTED.inc(len(scores))
        started = _observe(stage, "results", started)

        for user, state, partition in zip(users, states, partitions, strict=True):
            self._table.put(user.encode(), state.to_bytes(), partition)
        started = _observe(stage, "table", started)
        if later:
            await self._rescore_late(later)
            _observe(stage, "silent", started)

    async def _rescore_late(self, due: list[tuple[int, Due]]) -> None:
        """Silent re-scores of users this window touched, on the states it just wrote."""
        loaded = [(p, entry, self._load(entry.user_id, p)) for p, entry in due]
        ready = [(p, e, s) for p, e, s in loaded if s is not None and s.last_ts_ms == e.last_ts_ms]
        if not ready:
            return
        elapsed = [entry.elapsed_ms(self.idle.policy) for _, entry, _ in ready]
        states = [state for _, _, state in ready]
        length = self._settings.sequence_length
        tokens = silence_tokens(states, elapsed, self._vocab, length)
        users = [entry.user_id for _, entry, _ in ready]
        model, features = await self._score(
            tokens, silence_item_hashes(states, length), states, elapsed
        )
        # A refused silent re-score has no events to dead-letter: it is dropped, and the
        # user is due again at the next level of silence.
        # (`rejected` is empty when no row was refused.)
        keep = [i for i in range(len(users)) if not model.rejected or model.rejected[i] is None]
        if len(keep) < len(users):
            ready, users, states, elapsed = _rows(keep, ready, users, states, elapsed)
            model = model.rows(keep)
            features = None if features is None else features[keep]
            if not users:
                return
        states, scores, alerts = self._results(users, states, model, elapsed)
        await self._emit(scores, alerts)
        self._observe_drift(model, elapsed, features)
        observe_emitted(scores, {}, self._clock())
        for (partition, _, _), user, state in zip(ready, users, states, strict=True):
            self._table.put(user.encode(), state.to_bytes(), partition)

    async def _emit(
        self, scores: list[Score], alerts: list[Alert], outcomes: WindowOutcomes | None = None
    ) -> None:
        """Scores and alerts to Kafka and PostgreSQL together, with the window's outcomes,
        pseudonymised if configured."""
        if self._pseudonymiser is not None:
            scores = self._pseudonymiser.scores(scores)
            alerts = self._pseudonymiser.alerts(alerts)
            if outcomes:
                outcomes = outcomes.with_users(self._pseudonymiser.user)
        writes = [self._publisher.results(scores, alerts), self._store.write(scores, alerts)]
        if outcomes and self._outcomes is not None:
            writes.append(self._outcomes.write(outcomes))
        await asyncio.gather(*writes)

    async def _score(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64],
        states: list[UserState],
        silent_ms: list[int],
    ) -> tuple[ModelScores, npt.NDArray[np.float32] | None]:
        """Score these users; with their behaviour features at the scoring time (their last
        event, plus the silence for a silent re-score) when the served model takes them.
        Returns the scores and the features sent (None when the model takes none)."""
        if not getattr(self._scorer, "takes_features", False):
            return await self._scorer.score(tokens, item_hashes), None
        scorer: FeatureScorer = self._scorer  # type: ignore[assignment]
        at = [state.last_ts_ms + silent for state, silent in zip(states, silent_ms, strict=True)]
        features = stack_features(states, at, self._vocab)
        return await scorer.score(tokens, item_hashes, features), features

    def _observe_drift(
        self,
        model: ModelScores,
        silent_ms: list[int],
        features: npt.NDArray[np.float32] | None,
    ) -> None:
        quality.observe(
            self.drift,
            model.model_versions,
            model.churn,
            model.purchase,
            model.anomaly,
            silent_ms,
            features,
            self._clock(),
        )

    def _due_silent(
        self, partitions: list[int], window_users: Mapping[str, UserState]
    ) -> tuple[list[tuple[int, Due, UserState]], list[tuple[int, Due]]]:
        """Users of these partitions whose next silence level the partition's event time has
        passed: those outside the window with their stored state (skipped when the table
        holds a newer event than the index knew), and those inside it."""
        due: list[tuple[int, Due, UserState]] = []
        later: list[tuple[int, Due]] = []
        for partition in partitions:
            for entry in self.idle.due(partition):
                if entry.user_id in window_users:
                    later.append((partition, entry))
                    continue
                state = self._load(entry.user_id, partition)
                if state is not None and state.last_ts_ms == entry.last_ts_ms:
                    due.append((partition, entry, state))
        return due, later

    async def process_isolated(self, messages: Sequence[Message]) -> None:
        """Each message as a window of its own; one that still fails is dead-lettered.

        For a window that failed as a whole: whatever made it fail is in one message (or no
        longer happens), and each state's applied offset keeps the messages the failed
        attempt already folded in from counting twice.
        """
        metrics.WINDOWS_ISOLATED.inc()
        for message in messages:
            try:
                await self.process([message])
            except Stopping:
                raise
            except Exception as exc:
                log.error(
                    "message failed on its own; sending it to the dead-letter topic",
                    exc_info=True,
                    extra=message.where(),
                )
                rejection = Rejection(PROCESSING_ERROR, summary(exc))
                metrics.DEAD_LETTERS.labels(PROCESSING_ERROR).inc()
                await self._dead_letter_until_accepted(message, rejection)

    async def _dead_letter_until_accepted(self, message: Message, rejection: Rejection) -> None:
        """Retried whatever the error: only the dead-letter topic itself can be at fault now
        (missing, not authorised), which an operator fixes; the worker says so meanwhile."""
        await retry_forever(
            lambda: self._publisher.dead_letters([(message, rejection)]),
            is_retriable=lambda exc: True,
            what="dead letter",
            max_backoff_s=self._settings.retry_max_backoff_s,
            stop=self._stop,
            on_failure=lambda exc: self._health.fail(DEAD_LETTER, summary(exc)),
        )
        self._health.recover(DEAD_LETTER)

    async def _dead_letter_refused(
        self, window: Window, users: list[str], model: ModelScores
    ) -> list[int]:
        """Dead-letter the events of users whose request Triton refused; the rows to keep.

        Their states are not written, so the events do not count: a `clickscore dlq replay`
        after the model is fixed brings them back. A refused silent re-score has no events:
        it is dropped, and the user is due again at the next level of silence.
        """
        refused = [i for i, why in enumerate(model.rejected) if why is not None]
        if not refused:
            return list(range(len(users)))
        letters = [
            (message, Rejection(MODEL_REJECTED, str(model.rejected[i])))
            for i in refused
            for message in window.messages.get(users[i], [])
        ]
        for _ in letters:
            metrics.DEAD_LETTERS.labels(MODEL_REJECTED).inc()
        await self._publisher.dead_letters(letters)
        return [i for i, why in enumerate(model.rejected) if why is None]

    def _results(
        self,
        users: list[str],
        states: list[UserState],
        model: ModelScores,
        silent_ms: list[int] | None = None,
    ) -> tuple[list[UserState], list[Score], list[Alert]]:
        """Each user's state with its scores and alert memory, their scores and alerts."""
        scored_at_ms = int(self._clock() * 1000)
        scored: list[UserState] = []
        scores: list[Score] = []
        alerts: list[Alert] = []
        for i, (user, before) in enumerate(zip(users, states, strict=True)):
            churn, purchase = float(model.churn[i]), float(model.purchase[i])
            anomaly, version = float(model.anomaly[i]), model.model_versions[i]
            threshold = math.nan if model.churn_threshold is None else model.churn_threshold[i]
            served = model.anomaly_threshold
            anomaly_threshold = math.nan if served is None else float(served[i])
            silence = silent_ms[i] if silent_ms else 0  # > 0: a silent re-score, not events
            state, raised = evaluate(
                before,
                user,
                churn,
                purchase,
                anomaly,
                version,
                self._rules,
                float(threshold),
                silence,
                anomaly_threshold=anomaly_threshold,
            )
            has_next = i < len(model.next_items)
            scored.append(state)
            alerts += raised
            scores.append(
                Score(
                    user_id=user,
                    churn_risk=churn,
                    purchase_intent=purchase,
                    anomaly=state.anomaly,
                    model_version=version,
                    event_count=state.event_count,
                    last_event_id=state.last_event_ids[-1] if state.last_event_ids else "",
                    last_event_ts_ms=state.last_ts_ms,
                    scored_at_ms=scored_at_ms,
                    next_items=tuple(model.next_items[i]) if has_next else (),
                    next_purchase=float(model.next_purchase[i]) if has_next else math.nan,
                    trigger=SILENCE if silence else EVENT,
                    silence_ms=silence,
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
        metrics.EVENTS_REPLAYED.inc(window.replayed)
        metrics.WINDOW_EVENTS.observe(len(messages))
        metrics.WINDOW_USERS.observe(len(window.states))
        for message, rejection in window.rejected:
            metrics.DEAD_LETTERS.labels(rejection.reason).inc()
            log.warning(
                "event rejected to the dead-letter topic",
                extra=message.where() | {"reason": rejection.reason, "detail": rejection.detail},
            )
