"""What the demo times on the scores topic, by why each score was made (its `trigger`).

- Event-triggered score latency: from the demo sending a user's newest event to the score
  that carries it (`scored_at_ms`). Only event-triggered scores count: a silent re-score
  carries the same event, sent hours of event time earlier, and counted as latency it read
  as a pipeline minutes behind (issue 21: p99 65.6 s).
- Silent re-scores: from when the user became due to the re-score. Due is the user's last
  event plus the level of silence, in event time; the replay compresses days of event time
  into minutes, so that moment is placed on the demo's own clock: when it sent the first
  event at or past it, the event that moved event time past the level. It includes the
  wait for the next event of the user's partition, which is what reveals the silence.

Pure: records and sends in, seconds out.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from stream.contract.events import Event
from stream.scoring.scores import is_event_triggered


@dataclass
class ScoreTimes:
    event_s: list[float] = field(default_factory=list)  # event-triggered score latencies
    silent_delay_s: list[float] = field(default_factory=list)  # silent re-scores, due -> score
    sent_ms: dict[str, int] = field(default_factory=dict)  # event id -> when it was sent
    # Event time -> when the demo sent the first event at or past it (events go in time order).
    _event_ts: list[int] = field(default_factory=list)
    _sent_at: list[int] = field(default_factory=list)

    def sent(self, batch: Sequence[Event], at_ms: int) -> None:
        for event in batch:
            self.sent_ms[event.event_id] = at_ms
            if not self._event_ts or event.ts_ms > self._event_ts[-1]:
                self._event_ts.append(event.ts_ms)
                self._sent_at.append(at_ms)

    def observe(self, score: Mapping[str, object]) -> float | None:
        """Time one score record; its latency if it is event-triggered and of an event this
        demo sent, else None."""
        scored_at = score.get("scored_at_ms")
        if not isinstance(scored_at, int):
            return None
        if is_event_triggered(score):
            sent = self.sent_ms.get(str(score.get("last_event_id")))
            if sent is None:
                return None
            latency = max(0.0, (scored_at - sent) / 1000)
            self.event_s.append(latency)
            return latency
        last, silence = score.get("last_event_ts_ms"), score.get("silence_ms")
        if isinstance(last, int) and isinstance(silence, int):
            self.silent_delay_s.append(
                max(0.0, (scored_at - self.due_sent_ms(last + silence)) / 1000)
            )
        return None

    def due_sent_ms(self, due_ts_ms: int) -> int:
        """When the demo sent the first event at or past this event time (the due time itself
        if none was: then the worker's clock cannot have passed it either)."""
        i = bisect_left(self._event_ts, due_ts_ms)
        return self._sent_at[i] if i < len(self._event_ts) else due_ts_ms
