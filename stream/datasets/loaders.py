"""Public e-commerce clickstream files -> `Event`s of the contract, streamed row by row.

    taobao       CSV, no header: user_id,item_id,category_id,behavior,timestamp (epoch s)
    yoochoose    TSV, header SessionId ItemId Time (epoch s, float); one session is one user
    diginetica   `;` CSV, header session_id;user_id;item_id;timeframe;eventdate; item views
    rees46       CSV, header event_time,event_type,product_id,category_id,category_code,brand,
                 price,user_id,user_session; event_time like "2019-10-01 00:00:00 UTC"
    retailrocket CSV, header timestamp,visitorid,event,itemid,transactionid (epoch ms)
    jsonl        this project's wire contract, one event per line (`stream.datasets.synthetic`)

Event ids are `{format}:{line}:{hash of the row}`: the same file gives the same ids on every
load, so the worker drops a re-sent replay as duplicates, while two files of one format (a
train and a validation split) never share an id. Events come out in file order; a malformed
row is counted in `LoadStats` and skipped. A `.gz` path is read through gzip.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, cast

from stream.contract.events import Event, Rejection, ValidationLimits, parse_event

FORMATS: tuple[str, ...] = ("taobao", "yoochoose", "diginetica", "rees46", "retailrocket", "jsonl")

_TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "add_to_wishlist", "buy": "purchase"}
_REES46_TYPES = {
    "view": "view",
    "cart": "add_to_cart",
    "remove_from_cart": "remove_from_cart",
    "purchase": "purchase",
}
_RETAILROCKET_TYPES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
_EPOCH_DAY = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_ANY_TIME = ValidationLimits(max_age_s=1 << 40, max_future_s=1 << 40)
_KEPT_EXAMPLES = 5


class Malformed(ValueError):
    """A row this format cannot turn into an event; `reason` is a short stable label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class LoadStats:
    rows: int = 0  # data rows read, header excluded
    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows
    examples: list[str] = field(default_factory=list)  # the first few "line N: reason"

    @property
    def malformed(self) -> int:
        return sum(self.skipped.values())

    def skip(self, line: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < _KEPT_EXAMPLES:
            self.examples.append(f"line {line}: {reason}")


RowParser = Callable[[list[str], str], Event]


def _fields(row: list[str], count: int) -> list[str]:
    if len(row) != count:
        raise Malformed(f"expected {count} fields, got {len(row)}")
    return [value.strip() for value in row]


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise Malformed(f"{name} is not an integer") from None


def _seconds_ms(value: str) -> int:
    try:
        seconds = float(value)
    except ValueError:
        raise Malformed("timestamp is not a number") from None
    if not 0 < seconds < 1e11:  # epoch 0 and NaN/inf are placeholders, never real events
        raise Malformed("timestamp out of range")
    return round(seconds * 1000)


def _required(value: str, name: str) -> str:
    if not value or value.upper() == "NA":
        raise Malformed(f"{name} missing")
    return value


def _taobao(row: list[str], eid: str) -> Event:
    user, item, category, behavior, ts = _fields(row, 5)
    event_type = _TAOBAO_TYPES.get(behavior)
    if event_type is None:
        raise Malformed("unknown behavior")
    return Event(
        eid,
        _required(user, "user_id"),
        _seconds_ms(ts),
        event_type,
        item_id=_required(item, "item_id"),
        category=category or None,
    )


def _yoochoose(row: list[str], eid: str) -> Event:
    session, item, ts = _fields(row, 3)
    session = _required(session, "session")
    # A YooChoose click opens an item page: what `view` means in this contract.
    return Event(
        eid,
        f"s{session}",
        _seconds_ms(ts),
        "view",
        item_id=_required(item, "item_id"),
        session_id=session,
    )


def _diginetica(row: list[str], eid: str) -> Event:
    session, user, item, timeframe, day = _fields(row, 5)
    session = _required(session, "session_id")
    try:
        midnight_ms = (date.fromisoformat(day) - _EPOCH_DAY).days * 86_400_000
    except ValueError:
        raise Malformed("eventdate is not a date") from None
    offset_ms = _int(timeframe, "timeframe")
    if offset_ms < 0:
        raise Malformed("timeframe negative")
    # Most rows are anonymous (NA): the session is the only user there is.
    user_id = user if user and user.upper() != "NA" else f"s{session}"
    return Event(
        eid,
        user_id,
        midnight_ms + offset_ms,
        "view",
        item_id=_required(item, "item_id"),
        session_id=session,
    )


def _rees46(row: list[str], eid: str) -> Event:
    when, kind, item, category_id, category_code, brand, price, user, session = _fields(row, 9)
    event_type = _REES46_TYPES.get(kind)
    if event_type is None:
        raise Malformed("unknown event_type")
    try:
        parsed = datetime.fromisoformat(when.removesuffix(" UTC")).replace(tzinfo=UTC)
        price_value = float(price) if price else None
    except ValueError:
        raise Malformed("bad event_time or price") from None
    if price_value is not None and not 0 <= price_value <= 1e9:
        raise Malformed("price out of range")
    extra = {"brand": brand, "category_code": category_code}
    return Event(
        eid,
        _required(user, "user_id"),
        (parsed - _EPOCH) // _ONE_MS,
        event_type,
        item_id=_required(item, "product_id"),
        category=category_id or None,
        price=price_value,
        session_id=session or None,
        properties={k: v for k, v in extra.items() if v} or None,
    )


def _retailrocket(row: list[str], eid: str) -> Event:
    ts, visitor, kind, item, transaction = _fields(row, 5)
    event_type = _RETAILROCKET_TYPES.get(kind)
    if event_type is None:
        raise Malformed("unknown event")
    ts_ms = _int(ts, "timestamp")
    if ts_ms <= 0:
        raise Malformed("timestamp out of range")
    return Event(
        eid,
        _required(visitor, "visitorid"),
        ts_ms,
        event_type,
        item_id=_required(item, "itemid"),
        properties={"transaction_id": transaction} if transaction else None,
    )


# format -> (delimiter, header columns or None, row parser)
_CSV_FORMATS: dict[str, tuple[str, tuple[str, ...] | None, RowParser]] = {
    "taobao": (",", None, _taobao),
    "yoochoose": ("\t", ("SessionId", "ItemId", "Time"), _yoochoose),
    "diginetica": (
        ";",
        ("session_id", "user_id", "item_id", "timeframe", "eventdate"),
        _diginetica,
    ),
    "rees46": (
        ",",
        (
            "event_time",
            "event_type",
            "product_id",
            "category_id",
            "category_code",
            "brand",
            "price",
            "user_id",
            "user_session",
        ),
        _rees46,
    ),
    "retailrocket": (
        ",",
        ("timestamp", "visitorid", "event", "itemid", "transactionid"),
        _retailrocket,
    ),
}


def _open_text(path: Path) -> IO[str]:
    # errors="replace": a stray byte spoils one row (then counted), never the whole load.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open("r", encoding="utf-8", errors="replace", newline="")


def _open_bytes(path: Path) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")


def _row_id(format: str, line: int, row: list[str]) -> str:
    digest = hashlib.blake2b("\x1f".join(row).encode("utf-8", "replace"), digest_size=5)
    return f"{format}:{line}:{digest.hexdigest()}"


def _load_csv(format: str, path: Path, stats: LoadStats) -> Iterator[Event]:
    delimiter, header, parse = _CSV_FORMATS[format]
    with _open_text(path) as text:
        reader = csv.reader(text, delimiter=delimiter)
        first = True
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over csv's size limit
                stats.rows += 1
                stats.skip(reader.line_num, f"unreadable row: {exc}"[:60])
                continue
            # Only a first line that names the columns is a header: a file cut from the
            # middle of a dataset starts with data.
            if first and header is not None and [c.strip() for c in row] == list(header):
                first = False
                continue
            first = False
            if not row:
                continue
            stats.rows += 1
            try:
                event = parse(row, _row_id(format, reader.line_num, row))
            except Malformed as exc:
                stats.skip(reader.line_num, exc.reason)
                continue
            stats.events += 1
            yield event


def _load_jsonl(path: Path, stats: LoadStats) -> Iterator[Event]:
    with _open_bytes(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            stats.rows += 1
            parsed = parse_event(line, 0, _ANY_TIME)
            if isinstance(parsed, Rejection):
                stats.skip(number, parsed.reason)
                continue
            stats.events += 1
            yield parsed


def load(
    format: str, path: Path, limit: int | None = None, stats: LoadStats | None = None
) -> Iterator[Event]:
    """Stream a file's events in file order, at most `limit`; counts go into `stats`.

    The format and the path are checked here, before the first event is asked for.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    stats = stats if stats is not None else LoadStats()
    events = _load_jsonl(path, stats) if format == "jsonl" else _load_csv(format, path, stats)
    return events if limit is None else islice(events, max(0, limit))


def sort_by_time(events: Iterable[Event]) -> list[Event]:
    """Stable: events of the same millisecond keep their file order."""
    return sorted(events, key=_ts)


def _ts(event: Event) -> int:
    return event.ts_ms
