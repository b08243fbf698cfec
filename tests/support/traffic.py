"""Crafted traffic for the worker tests: normal users, a churner, a bot burst, bad events."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import orjson

from stream.contract.events import Event, ValidationLimits, event_to_json, parse_event

MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass
class Traffic:
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    events_per_user: Counter[str] = field(default_factory=Counter)
    bad: dict[bytes, str] = field(default_factory=dict)  # original bytes -> expected reason
    churner: str = "churner-1"
    bot: str = "bot-1"

    def add(self, event: Event) -> None:
        self.records.append((event.user_id.encode(), event_to_json(event)))
        self.events_per_user[event.user_id] += 1

    def add_bad(self, key: bytes | None, value: bytes, reason: str, rng: random.Random) -> None:
        self.records.insert(rng.randrange(len(self.records) + 1), (key, value))
        self.bad[value] = reason

    @property
    def users(self) -> set[str]:
        return set(self.events_per_user)


def build_traffic(
    now_ms: int, users: int = 300, events_per_user: int = 8, seed: int = 7
) -> Traffic:
    rng = random.Random(seed)
    traffic = Traffic()
    types = ["view"] * 6 + ["search", "click", "add_to_cart"]
    for u in range(users):
        user = f"user-{u}"
        ts = now_ms - 60 * MINUTE_MS + rng.randrange(10 * MINUTE_MS)
        for n in range(events_per_user):
            ts += rng.randrange(20_000, 200_000)  # a person: tens of seconds apart
            traffic.add(
                Event(
                    f"{user}-{n}",
                    user,
                    ts,
                    rng.choice(types),
                    item_id=f"i{rng.randrange(500)}",
                    category=f"c{rng.randrange(20)}",
                    price=round(rng.uniform(2, 200), 2),
                    platform=rng.choice(["web", "app"]),
                )
            )
    # A churner: visits two days apart, fading out.
    for n in range(6):
        ts = now_ms - 14 * DAY_MS + n * 2 * DAY_MS
        traffic.add(Event(f"{traffic.churner}-{n}", traffic.churner, ts, "view", platform="web"))
    # A bot: 80 requests 20 ms apart.
    start = now_ms - 5 * MINUTE_MS
    for n in range(80):
        traffic.add(
            Event(f"{traffic.bot}-{n}", traffic.bot, start + 20 * n, "view", item_id=f"i{n}")
        )

    good = list(traffic.records)
    # At-least-once producers resend: 50 exact duplicates.
    traffic.records += rng.sample(good, 50)
    rng.shuffle(traffic.records)
    # Events of one user must stay in time order (one producer per user), as in a shop.
    traffic.records.sort(key=lambda r: _ts_of(r[1]))

    ok = {"event_id": "x1", "user_id": "mallory", "ts": now_ms, "event_type": "view"}
    traffic.add_bad(b"mallory", b"{not json", "bad_json", rng)
    traffic.add_bad(b"mallory", orjson.dumps({**ok, "user_id": ""}), "missing_user_id", rng)
    traffic.add_bad(
        b"mallory",
        orjson.dumps({**ok, "event_id": "x2", "ts": "2999-01-01T00:00:00Z"}),
        "timestamp_out_of_range",
        rng,
    )
    traffic.add_bad(
        b"mallory",
        orjson.dumps({**ok, "event_id": "x3", "properties": {"p": "a" * 20_000}}),
        "oversized_payload",
        rng,
    )
    traffic.add_bad(
        b"mallory", orjson.dumps({**ok, "event_id": "x4", "price": "cheap"}), "wrong_type", rng
    )
    traffic.add_bad(b"someone-else", orjson.dumps({**ok, "event_id": "x5"}), "key_mismatch", rng)
    return traffic


def _ts_of(value: bytes) -> int:
    return int(orjson.loads(value)["ts"])


def valid_counts(records: list[tuple[bytes | None, bytes]], now_ms: int) -> Counter[str]:
    """Distinct valid events per user in `records`, as the worker should count them."""
    seen: set[tuple[str, str]] = set()
    for key, value in records:
        parsed = parse_event(value, now_ms, ValidationLimits())
        if isinstance(parsed, Event) and key == parsed.user_id.encode():
            seen.add((parsed.user_id, parsed.event_id))
    return Counter(user for user, _ in seen)
