"""CDNOW purchases (1997-1998) -> `Event`s of the contract: one purchase event per record.

    file     whitespace-separated, header `customer_id date number_of_cds dollar_value`,
             date as YYYYMMDD (as shipped with the `lifetimes` package)
    event    purchase at midnight UTC of the date, price = dollar_value, item_id "cds",
             properties {"cds": number_of_cds}

Event ids are `cdnow:{line}:{hash of the row}`, stable across loads. A malformed row is
counted in `LoadStats` and skipped. A `.gz` path is read through gzip.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from stream.contract.events import Event
from stream.datasets.loaders import LoadStats, Malformed

HEADER = ("customer_id", "date", "number_of_cds", "dollar_value")


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open("r", encoding="utf-8", errors="replace")


def _event(fields: list[str], line: int) -> Event:
    if len(fields) != 4:
        raise Malformed(f"expected 4 fields, got {len(fields)}")
    customer, day, cds, dollars = fields
    try:
        when = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        raise Malformed("date is not YYYYMMDD") from None
    try:
        count, value = int(cds), float(dollars)
    except ValueError:
        raise Malformed("number_of_cds or dollar_value is not a number") from None
    if count < 0 or not 0 <= value <= 1e9:
        raise Malformed("number_of_cds or dollar_value out of range")
    digest = hashlib.blake2b(" ".join(fields).encode(), digest_size=5).hexdigest()
    return Event(
        f"cdnow:{line}:{digest}",
        customer,
        int(when.timestamp() * 1000),
        "purchase",
        item_id="cds",
        price=value,
        properties={"cds": count},
    )


def load_cdnow(path: Path, stats: LoadStats | None = None) -> Iterator[Event]:
    """Stream the file's purchases in file order; counts go into `stats`."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    stats = stats if stats is not None else LoadStats()
    return _rows(path, stats)


def _rows(path: Path, stats: LoadStats) -> Iterator[Event]:
    with _open(path) as text:
        for line, raw in enumerate(text, start=1):
            fields = raw.split()
            if not fields or (line == 1 and tuple(fields) == HEADER):
                continue
            stats.rows += 1
            try:
                event = _event(fields, line)
            except Malformed as exc:
                stats.skip(line, exc.reason)
                continue
            stats.events += 1
            yield event
