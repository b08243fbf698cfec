"""`clickscore bench table`: how the per-user table's memory and cost grow with active users.

The worker's per-event cost that depends on how many users it holds is the table: the
broker, Triton and the sinks cost the same per event at 10k users as at 1M. So this
measures the table alone, in this process, for each user count, with both stores Faust
offers:

- memory: Faust's `memory://` store keeps the table in a dict of bytes -> bytes;
- rocksdb: Faust's `rocksdb://` store opens a `rocksdict.Rdict` in raw mode, which is what
  this opens (with Faust's default options), in a temporary folder.

Each user gets a full sequence (`sequence_length` events), so the state is the largest it
gets; then `updates` events of random users are folded the way the worker does it (load,
`UserState.from_bytes`, `apply_event`, `to_bytes`, store). Memory is the growth of this
process's resident set while the table is filled, per user, next to the state's own size
(`sequence bytes` = the token array alone), so "beyond the sequence" is the difference.
"""

from __future__ import annotations

import gc
import random
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import NUM_FIELDS, Vocabulary

TOKEN_BYTES = 2
EVENT_TYPES = ("view", "view", "view", "search", "cart", "purchase")


@dataclass(frozen=True)
class TablePoint:
    store: str
    users: int
    state_bytes: float  # mean serialized state
    sequence_bytes: int  # the token array alone
    rss_per_user: float  # resident-set growth while filling, per user
    fill_s: float
    update_us: float  # per event folded into a random user's state


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _event(user: int, n: int, ts_ms: int) -> Event:
    return Event(
        event_id=f"u{user}-e{n}",
        user_id=f"user-{user}",
        ts_ms=ts_ms,
        event_type=EVENT_TYPES[n % len(EVENT_TYPES)],
        item_id=f"item-{(user * 31 + n) % 50_000}",
        category=f"cat-{(user + n) % 300}",
        price=float(10 + n % 90),
        platform="web",
    )


def full_state(user: int, length: int, vocab: Vocabulary, start_ms: int) -> UserState:
    state: UserState | None = None
    for n in range(length):
        state, _ = apply_event(state, _event(user, n, start_ms + n * 60_000), vocab, length)
    assert state is not None
    return state


@contextmanager
def open_store(kind: str) -> Iterator[MutableMapping[bytes, bytes]]:
    if kind == "memory":
        yield {}
        return
    from faust.stores.rocksdb import RocksDBOptions

    with tempfile.TemporaryDirectory(prefix="clickscore-table-") as folder:
        db = RocksDBOptions(use_rocksdict=True).open(Path(folder) / "table")
        try:
            yield db
        finally:
            db.close()


def measure_table(kind: str, users: int, updates: int, length: int, seed: int = 0) -> TablePoint:
    vocab = Vocabulary()
    start_ms = int(time.time() * 1000) - 86_400_000
    # One template state per 1,000 users keeps the fill fast; every user's bytes differ
    # only in their ids, so sizes are what a real user of a full sequence takes.
    templates = [full_state(u, length, vocab, start_ms) for u in range(min(users, 1000))]
    raw = [t.to_bytes() for t in templates]
    gc.collect()
    before = rss_bytes()
    with open_store(kind) as store:
        began = time.perf_counter()
        for user in range(users):
            # A copy per user: a dict would otherwise hold one shared object 1,000 times.
            store[b"user-%d" % user] = bytes(bytearray(raw[user % len(raw)]))
        fill_s = time.perf_counter() - began
        gc.collect()
        grown = rss_bytes() - before

        rng = random.Random(seed)
        began = time.perf_counter()
        for n in range(updates):
            user = rng.randrange(users)
            key = b"user-%d" % user
            state = UserState.from_bytes(store[key])
            event = _event(user, length + n, start_ms + (length + n) * 60_000)
            state, _ = apply_event(state, event, vocab, length)
            store[key] = state.to_bytes()
        update_s = time.perf_counter() - began
    return TablePoint(
        store=kind,
        users=users,
        state_bytes=sum(len(r) for r in raw) / len(raw),
        sequence_bytes=length * NUM_FIELDS * TOKEN_BYTES,
        rss_per_user=grown / users,
        fill_s=fill_s,
        update_us=update_s / updates * 1e6,
    )
