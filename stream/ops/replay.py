"""`clickscore replay` and `clickscore generate`: feed recorded or synthetic clickstreams into
the events topic, keyed by user id, as a shop's producers would.

The whole input (up to --limit) is read and stably sorted by time in memory before anything is
sent: shifting to now needs the newest time first, and the worker scores each user's events in
arrival order. An already sorted file costs one pass (timsort). With --shift-to-now (the
default) every time moves by one constant so the newest event lands at now and all gaps stay as
recorded; the public samples are years old and the worker refuses events older than
`max_event_age_s`. --rate paces sends, but times are not re-stamped to wall-clock send time.

No torch and no Faust: `replay` runs beside the worker. aiokafka is imported where it is used,
so building the `clickscore` parser stays cheap for every other command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from stream.contract.events import Event, event_to_json
from stream.datasets.loaders import FORMATS, LoadStats, load
from stream.datasets.synthetic import SyntheticConfig, generate, write_jsonl, write_truth
from stream.kafka_security import aiokafka_options
from stream.retry import retry_forever
from stream.settings import ReplaySettings

log = logging.getLogger(__name__)

SEND_BATCH = 1_000  # records awaited together: bounds memory and what a retry re-sends
PROGRESS_EVERY_S = 5.0

Progress = Callable[[int, int, float], None]  # sent, total, seconds since the start


class ReplayError(Exception):
    """The replay cannot start (bad input, unreachable broker); the message says why."""


@dataclass(frozen=True)
class ReplayStats:
    sent: int
    seconds: float
    shift_ms: int  # added to every event time
    first_ts_ms: int | None  # after the shift
    last_ts_ms: int | None
    too_old: int  # sent, but older than max_event_age_s: the worker will dead-letter them

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class TokenBucket:
    """Average `rate` tokens a second, at most `burst` at once; a debt is slept off."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self, count: int) -> float:
        """Spend `count` tokens; returns how long to wait before using them."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate) - count
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


def shifted(events: Sequence[Event], shift_ms: int) -> list[Event]:
    if shift_ms == 0:
        return list(events)
    return [replace(e, ts_ms=e.ts_ms + shift_ms) for e in events]


def _is_retriable(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaTimeoutError

    # aiokafka marks its error types retriable or not; a timed-out ack is worth another try
    # too. Anything else (a bad argument, a bug) ends the replay.
    return isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))


async def ensure_topic(settings: ReplaySettings, topic: str) -> None:
    """Create the topic with the worker's partition count, so the worker need not run first."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.broker_servers, **aiokafka_options(settings)
    )
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            new = NewTopic(topic, settings.topic_partitions, replication_factor=1)
            # Another producer may have created it since the listing.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
    finally:
        await admin.close()


async def replay(
    settings: ReplaySettings,
    events: Iterable[Event],
    *,
    rate: float,
    shift_to_now: bool,
    topic: str | None = None,
    progress: Progress | None = None,
    on_batch: Callable[[Sequence[Event]], None] | None = None,
) -> ReplayStats:
    """Send `events` in time order to the events topic (or `topic`), keyed by user id.

    `on_batch` sees each batch just before it is sent (the demo times latency from there).
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    topic = topic or settings.topic_events
    ordered = sorted(events, key=lambda e: e.ts_ms)
    now_ms = time.time_ns() // 1_000_000
    shift_ms = now_ms - ordered[-1].ts_ms if ordered and shift_to_now else 0
    ordered = shifted(ordered, shift_ms)
    oldest_accepted = now_ms - settings.max_event_age_s * 1000
    too_old = sum(1 for e in ordered if e.ts_ms < oldest_accepted)

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker_servers,
        linger_ms=5,
        acks="all",
        **aiokafka_options(settings),
    )
    try:
        await ensure_topic(settings, topic)
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise ReplayError(f"cannot reach the broker at {settings.broker_servers}: {exc}") from exc
    # Small batches under a low rate, so pacing stays smooth; big ones when unpaced.
    batch_size = SEND_BATCH if rate <= 0 else max(1, min(SEND_BATCH, int(rate / 10)))
    bucket = TokenBucket(rate, burst=batch_size) if rate > 0 else None
    started = time.monotonic()
    last_report = started
    try:
        for begin in range(0, len(ordered), batch_size):
            batch = ordered[begin : begin + batch_size]
            if bucket is not None:
                await asyncio.sleep(bucket.take(len(batch)))
            if on_batch is not None:
                on_batch(batch)
            await retry_forever(
                partial(_send_batch, producer, topic, batch),
                is_retriable=_is_retriable,
                what=f"produce to {topic}",
                max_backoff_s=settings.retry_max_backoff_s,
                log=log,
            )
            now = time.monotonic()
            if progress is not None and now - last_report >= PROGRESS_EVERY_S:
                progress(begin + len(batch), len(ordered), now - started)
                last_report = now
    finally:
        await producer.stop()
    return ReplayStats(
        sent=len(ordered),
        seconds=time.monotonic() - started,
        shift_ms=shift_ms,
        first_ts_ms=ordered[0].ts_ms if ordered else None,
        last_ts_ms=ordered[-1].ts_ms if ordered else None,
        too_old=too_old,
    )


async def _send_batch(producer: Any, topic: str, batch: Sequence[Event]) -> None:
    """Send, then wait for every ack. A retry re-sends the whole batch: the worker drops the
    duplicates by event id, which is the contract's at-least-once rule."""
    pending = [
        await producer.send(topic, key=e.user_id.encode(), value=event_to_json(e)) for e in batch
    ]
    await asyncio.gather(*pending)


# --- command line -----------------------------------------------------------------------------


def _print_progress(sent: int, total: int, seconds: float) -> None:
    print(f"  sent {sent:,}/{total:,} ({sent / seconds:,.0f} events/s)", file=sys.stderr)


def _synthetic_config(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(users=args.users, days=args.days, seed=args.seed)


def _replay_command(settings: ReplaySettings, args: argparse.Namespace) -> int:
    stats = LoadStats()
    try:
        if args.format == "synthetic":
            events: list[Event] = generate(_synthetic_config(args))[0]
            if args.limit is not None:
                events = events[: args.limit]
        else:
            if args.path is None:
                raise ReplayError(f"replay {args.format} needs a PATH")
            events = list(load(args.format, args.path, limit=args.limit, stats=stats))
            print(f"read {stats.rows:,} rows: {stats.events:,} events, {stats.malformed:,} skipped")
            for reason, count in stats.skipped.most_common():
                print(f"  skipped {count:,}: {reason}")
        result = asyncio.run(
            replay(
                settings,
                events,
                rate=args.rate,
                shift_to_now=args.shift_to_now,
                topic=args.topic,
                progress=_print_progress,
            )
        )
    except (ReplayError, OSError, ValueError) as exc:
        print(f"clickscore replay: {exc}", file=sys.stderr)
        return 2
    print(
        f"sent {result.sent:,} events to {args.topic or settings.topic_events} in "
        f"{result.seconds:.1f} s ({result.rate:,.0f}/s), times shifted by {result.shift_ms:,} ms"
    )
    if result.too_old:
        print(
            f"warning: {result.too_old:,} events are older than max_event_age_s "
            f"({settings.max_event_age_s} s); the worker will dead-letter them",
            file=sys.stderr,
        )
    return 0


def _generate_command(settings: ReplaySettings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    events, truth = generate(_synthetic_config(args))
    written = write_jsonl(events, args.out)
    if args.truth is not None:
        write_truth(truth, args.truth)
    print(
        f"wrote {written:,} events of {len(truth):,} users to {args.out} "
        f"in {time.monotonic() - started:.1f} s"
        + (f", ground truth to {args.truth}" if args.truth is not None else "")
    )
    return 0


def _add_synthetic_options(parser: argparse.ArgumentParser, users: int) -> None:
    parser.add_argument("--users", type=int, default=users, help="synthetic users")
    parser.add_argument("--days", type=int, default=14, help="days of activity")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same events")


def add_parsers(subparsers: Any) -> None:
    """Register `replay` and `generate` on the `clickscore` sub-command parsers."""
    replay_parser = subparsers.add_parser(
        "replay",
        help="send a clickstream file (or synthetic events) to the events topic",
        description="Events are sent in time order, keyed by user id.",
    )
    replay_parser.add_argument("format", choices=(*FORMATS, "synthetic"))
    replay_parser.add_argument(
        "path", type=Path, nargs="?", help="the file (none for synthetic); .gz is read too"
    )
    replay_parser.add_argument(
        "--rate", type=float, default=0.0, help="events per second; 0 sends as fast as possible"
    )
    replay_parser.add_argument("--limit", type=int, default=None, help="send at most N events")
    replay_parser.add_argument(
        "--shift-to-now",
        dest="shift_to_now",
        action="store_true",
        default=True,
        help="move all times by one constant so the newest is now (default)",
    )
    replay_parser.add_argument(
        "--keep-time", dest="shift_to_now", action="store_false", help="send times as recorded"
    )
    replay_parser.add_argument("--topic", default=None, help="default: settings.topic_events")
    _add_synthetic_options(replay_parser, users=200)
    replay_parser.set_defaults(handler=_replay_command)

    generate_parser = subparsers.add_parser(
        "generate", help="write a synthetic clickstream (JSON lines) and its ground truth"
    )
    generate_parser.add_argument("out", type=Path, help="events file, one JSON event per line")
    generate_parser.add_argument("--truth", type=Path, default=None, help="ground-truth JSON")
    _add_synthetic_options(generate_parser, users=2000)
    generate_parser.set_defaults(handler=_generate_command)
