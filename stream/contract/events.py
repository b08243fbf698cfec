"""The clickstream event contract: parse raw Kafka bytes into an `Event` or a `Rejection`.

Wire format: one JSON object per message (one event), or a JSON array of such objects (a
batch of one user's events, as collectors that batch per request send them; every event
is validated on its own, and a rejection names its index in the array).

    required  event_id  str | int        unique per event; used to drop at-least-once duplicates
              user_id   str | int
              ts        str | int | float ISO-8601 (naive means UTC, "Z" allowed) or epoch ms
              event_type str              lower-cased; unknown types are kept as given
    optional  item_id   str | int | null
              category, session_id, platform  str | null
              price     int | float | null  0 <= price <= 1e9
              properties object | null     free-form, size-limited

Unknown top-level keys are ignored so producers can add fields before the worker knows them.
Empty optional strings are read as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

# Rejection reason codes: stable, machine-readable, used as a metrics label and in the
# dead-letter record. Add new codes; never rename one.
BAD_JSON = "bad_json"  # not valid UTF-8 JSON (incl. NaN/Infinity literals, nesting > 1024)
NOT_AN_OBJECT = "not_an_object"  # valid JSON, but not an object at the top level
MISSING_USER_ID = "missing_user_id"  # user_id absent, null or blank
MISSING_FIELD = "missing_field"  # event_id, ts or event_type absent, null or blank
WRONG_TYPE = "wrong_type"  # a field of the wrong JSON type (booleans are never numbers)
BAD_TIMESTAMP = "bad_timestamp"  # ts is a string that is not ISO-8601, or a bad number
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"  # ts too old or too far in the future
OVERSIZED_PAYLOAD = "oversized_payload"  # raw message over the byte limit (checked unparsed)
OVERSIZED_FIELD = "oversized_field"  # a string too long, or properties too big or too deep
BAD_NUMBER = "bad_number"  # price negative or absurd
EMPTY_BATCH = "empty_batch"  # a batch (JSON array) with no events

REASONS: tuple[str, ...] = (
    BAD_JSON,
    NOT_AN_OBJECT,
    MISSING_USER_ID,
    MISSING_FIELD,
    WRONG_TYPE,
    BAD_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE,
    OVERSIZED_PAYLOAD,
    OVERSIZED_FIELD,
    BAD_NUMBER,
    EMPTY_BATCH,
)

MAX_PRICE = 1e9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_DETAIL_VALUE_CHARS = 32  # enough to recognise a bad value in the dead letter, never a payload


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    ts_ms: int
    event_type: str
    item_id: str | None = None
    category: str | None = None
    price: float | None = None
    session_id: str | None = None
    platform: str | None = None
    properties: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str
    index: int | None = None  # the event's position in a batch message; None for one event


@dataclass(frozen=True)
class ValidationLimits:
    max_payload_bytes: int = 16_384
    max_field_chars: int = 256
    max_properties_bytes: int = 4_096
    max_age_s: int = 30 * 86_400
    max_future_s: int = 300
    # A batch message may hold this many events and be this many times max_payload_bytes.
    max_batch_events: int = 500


class _Reject(Exception):
    """Internal control flow: the first failed check ends parsing."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _DETAIL_VALUE_CHARS else text[: _DETAIL_VALUE_CHARS - 3] + "..."


def _text(obj: dict[str, Any], name: str, limit: int, *, allow_int: bool) -> str | None:
    """A string field, or None when absent, null or blank."""
    value = obj.get(name)
    if value is None:
        return None
    # bool is an int subclass; a JSON true is never an id.
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # orjson caps ints at 64 bits, so this stays short
    if not isinstance(value, str):
        raise _Reject(WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise _Reject(OVERSIZED_FIELD, f"{name} has {len(value)} chars, limit {limit}")
    return value if value.strip() else None


def _required(obj: dict[str, Any], name: str, limit: int, *, allow_int: bool) -> str:
    value = _text(obj, name, limit, allow_int=allow_int)
    if value is None:
        raise _Reject(MISSING_USER_ID if name == "user_id" else MISSING_FIELD, f"{name} missing")
    return value


def _timestamp_ms(value: object, limit: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Reject(MISSING_FIELD, "ts missing")
    if isinstance(value, bool):
        raise _Reject(WRONG_TYPE, "ts must be a string or a number, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # orjson already refuses NaN/Infinity; the check keeps direct callers safe too.
        if not math.isfinite(value):
            raise _Reject(BAD_TIMESTAMP, f"ts {_short(value)} is not finite")
        return int(value)
    if not isinstance(value, str):
        raise _Reject(WRONG_TYPE, f"ts must be a string or a number, got {type(value).__name__}")
    if len(value) > limit:
        raise _Reject(OVERSIZED_FIELD, f"ts has {len(value)} chars, limit {limit}")
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # Integer arithmetic: float seconds would lose milliseconds on far dates.
        return (parsed - _EPOCH) // _ONE_MS
    except (ValueError, OverflowError):
        raise _Reject(BAD_TIMESTAMP, f"ts {_short(value)} is not ISO-8601") from None


def _price(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Reject(WRONG_TYPE, f"price must be a number, got {type(value).__name__}")
    # Compare before float(): a huge int must not overflow the conversion.
    if not (0 <= value <= MAX_PRICE) or (isinstance(value, float) and not math.isfinite(value)):
        raise _Reject(BAD_NUMBER, f"price {_short(value)} outside 0..{MAX_PRICE:.0e}")
    return float(value)


def _properties(value: object, limit: int) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Reject(WRONG_TYPE, f"properties must be an object, got {type(value).__name__}")
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        # orjson writes at most 254 levels; such properties could never be re-emitted.
        raise _Reject(OVERSIZED_FIELD, "properties nested too deeply") from None
    if size > limit:
        raise _Reject(OVERSIZED_FIELD, f"properties is {size} bytes, limit {limit}")
    return value


def _parse(raw: bytes, now_ms: int, limits: ValidationLimits) -> Event:
    if len(raw) > limits.max_payload_bytes:
        raise _Reject(OVERSIZED_PAYLOAD, f"{len(raw)} bytes, limit {limits.max_payload_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Reject(BAD_JSON, str(exc)[:80]) from None
    return _from_object(obj, now_ms, limits)


def _from_object(obj: object, now_ms: int, limits: ValidationLimits) -> Event:
    if not isinstance(obj, dict):
        raise _Reject(NOT_AN_OBJECT, f"top level is {type(obj).__name__}")

    chars = limits.max_field_chars
    user_id = _required(obj, "user_id", chars, allow_int=True)
    event_id = _required(obj, "event_id", chars, allow_int=True)
    event_type = _required(obj, "event_type", chars, allow_int=False).strip().lower()
    ts_ms = _timestamp_ms(obj.get("ts"), chars)
    if not (now_ms - limits.max_age_s * 1000 <= ts_ms <= now_ms + limits.max_future_s * 1000):
        # _short: a float like 1e300 becomes a 300-digit int; the detail stays a short line.
        raise _Reject(
            TIMESTAMP_OUT_OF_RANGE, f"ts {_short(ts_ms)} ms is {_short(ts_ms - now_ms)} ms from now"
        )
    platform = _text(obj, "platform", chars, allow_int=False)
    return Event(
        event_id=event_id,
        user_id=user_id,
        ts_ms=ts_ms,
        event_type=event_type,
        item_id=_text(obj, "item_id", chars, allow_int=True),
        category=_text(obj, "category", chars, allow_int=False),
        price=_price(obj.get("price")),
        session_id=_text(obj, "session_id", chars, allow_int=False),
        platform=None if platform is None else platform.strip().lower(),
        properties=_properties(obj.get("properties"), limits.max_properties_bytes),
    )


def parse_event(raw: bytes, now_ms: int, limits: ValidationLimits) -> Event | Rejection:
    """Validate one message. Never raises for any input bytes."""
    try:
        return _parse(raw, now_ms, limits)
    except _Reject as rejected:
        return Rejection(rejected.reason, rejected.detail)


def is_batch(raw: bytes) -> bool:
    """Whether a message is a batch (a JSON array), from its first byte."""
    first = raw[:1]
    if first in (b" ", b"\t", b"\r", b"\n"):
        first = raw.lstrip()[:1]
    return first == b"["


def parse_message(raw: bytes, now_ms: int, limits: ValidationLimits) -> list[Event | Rejection]:
    """Validate one message: one event, or a batch (a JSON array) of events. Never raises.

    A batch gives one result per element, in order; each rejection carries its index. A
    batch that cannot be read at all (bad JSON, empty, too big) gives one rejection.
    """
    if not is_batch(raw):
        return [parse_event(raw, now_ms, limits)]
    limit = limits.max_payload_bytes * limits.max_batch_events
    if len(raw) > limit:
        return [Rejection(OVERSIZED_PAYLOAD, f"batch of {len(raw)} bytes, limit {limit}")]
    try:
        elements = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [Rejection(BAD_JSON, str(exc)[:80])]
    if not elements:
        return [Rejection(EMPTY_BATCH, "the batch holds no events")]
    if len(elements) > limits.max_batch_events:
        detail = f"batch of {len(elements)} events, limit {limits.max_batch_events}"
        return [Rejection(OVERSIZED_PAYLOAD, detail)]
    results: list[Event | Rejection] = []
    for index, element in enumerate(elements):
        try:
            results.append(_from_object(element, now_ms, limits))
        except _Reject as rejected:
            results.append(Rejection(rejected.reason, rejected.detail, index))
    return results


def event_to_json(event: Event) -> bytes:
    """Serialise in the wire contract (ts as epoch ms); missing optional fields are omitted."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "ts": event.ts_ms,
        "event_type": event.event_type,
    }
    optional = (
        ("item_id", event.item_id),
        ("category", event.category),
        ("price", event.price),
        ("session_id", event.session_id),
        ("platform", event.platform),
        ("properties", event.properties),
    )
    out.update((name, value) for name, value in optional if value is not None)
    return orjson.dumps(out)
