from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from zlib import crc32

import pytest

from stream.contract import tokenizer as tk
from stream.contract.events import Event
from stream.contract.tokenizer import FIELDS, NUM_FIELDS, Vocabulary, tokenize

VOCAB = Vocabulary()
T0 = 1_700_000_000_000


def ev(**kw: object) -> Event:
    base: dict[str, object] = {"event_id": "e", "user_id": "u", "ts_ms": T0, "event_type": "view"}
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def field(name: str, event: Event, prev_ts_ms: int | None = None) -> int:
    return tokenize(event, prev_ts_ms, VOCAB)[FIELDS.index(name)]


def test_fields() -> None:
    assert FIELDS == (
        "event_type",
        "item_bucket",
        "category_bucket",
        "price_bucket",
        "gap_bucket",
        "platform",
    )
    assert NUM_FIELDS == len(FIELDS) == 6
    assert len(tokenize(ev(), None, VOCAB)) == NUM_FIELDS


def test_default_field_sizes() -> None:
    # event types 3 + 9, items 3 + 4096, categories 3 + 512, prices 3 + 16,
    # gaps 3 + 16 (out-of-order + 15 ranges), platforms 3 + 3.
    assert VOCAB.field_sizes == (12, 4099, 515, 19, 19, 6)
    assert VOCAB.gap_buckets == 16


def test_known_event_types_in_fixed_order() -> None:
    ids = [field("event_type", ev(event_type=name)) for name in tk.EVENT_TYPES]
    assert ids == list(range(3, 12))
    assert field("event_type", ev(event_type="view")) == 3
    assert field("event_type", ev(event_type="add_to_wishlist")) == 11


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("pv", "view"),
        ("page_view", "view"),
        ("cart", "add_to_cart"),
        ("addtocart", "add_to_cart"),
        ("buy", "purchase"),
        ("transaction", "purchase"),
        ("fav", "add_to_wishlist"),
        ("remove_from_cart", "remove_from_cart"),
        ("PV", "view"),  # an Event built by hand may not be lower-cased
        (" Buy ", "purchase"),
    ],
)
def test_aliases(alias: str, canonical: str) -> None:
    assert field("event_type", ev(event_type=alias)) == field(
        "event_type", ev(event_type=canonical)
    )


@pytest.mark.parametrize("name", ["hover", "", "scroll", "view2"])
def test_unknown_type_is_other(name: str) -> None:
    assert field("event_type", ev(event_type=name)) == tk.OTHER == 2


def test_every_alias_targets_a_known_type() -> None:
    assert set(tk.EVENT_TYPE_ALIASES.values()) <= set(tk.EVENT_TYPES)
    assert set(tk.PLATFORM_ALIASES.values()) <= set(tk.PLATFORMS)


def test_item_and_category_buckets_are_crc32() -> None:
    assert field("item_bucket", ev(item_id="sku-1")) == 3 + crc32(b"sku-1") % 4096
    assert field("category_bucket", ev(category="shoes")) == 3 + crc32(b"shoes") % 512
    assert field("item_bucket", ev()) == tk.NONE == 2
    assert field("category_bucket", ev()) == tk.NONE


def test_item_bucket_stable_across_processes() -> None:
    # Python's hash() is salted per process; the bucket must not be.
    code = (
        "from stream.contract.events import Event; "
        "from stream.contract.tokenizer import Vocabulary, tokenize;"
        "print(tokenize(Event('e','u',0,'view','sku-1','cat'), None, Vocabulary())[1:3])"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(out) == 1
    assert out.pop().strip() == str(tokenize(ev(item_id="sku-1", category="cat"), None, VOCAB)[1:3])


def test_buckets_in_range_for_many_items() -> None:
    small = Vocabulary(item_buckets=7, category_buckets=3)
    items = {tokenize(ev(item_id=str(i), category=str(i)), None, small)[1] for i in range(500)}
    cats = {tokenize(ev(item_id=str(i), category=str(i)), None, small)[2] for i in range(500)}
    assert items == set(range(3, 10))
    assert cats == set(range(3, 6))


def test_price_buckets_monotonic_and_bounded() -> None:
    prices = [0.0, 0.5, 1.0, 2.0, 9.99, 10.0, 99.0, 1_000.0, 9_999.0, 10_000.0, 1e9]
    ids = [field("price_bucket", ev(price=p)) for p in prices]
    assert ids == sorted(ids)
    assert ids[0] == 3  # below 1
    assert ids[-1] == ids[-2] == 3 + 16 - 1  # the top bucket: >= 10 000
    assert all(3 <= i < VOCAB.field_sizes[3] for i in ids)
    assert field("price_bucket", ev(price=None)) == tk.NONE
    assert len(set(ids)) >= 8  # log scale spreads typical prices


@pytest.mark.parametrize(
    ("gap_s", "bucket"),
    [
        (0, 0),
        (0.999, 0),
        (1, 1),
        (1.5, 1),
        (3, 2),
        (10, 3),
        (30, 4),
        (120, 5),
        (600, 6),
        (1800, 7),
        (2 * 3600, 8),
        (6 * 3600, 9),
        (18 * 3600, 10),
        (2 * 86400, 11),
        (5 * 86400, 12),
        (20 * 86400, 13),
        (31 * 86400, 14),
        (365 * 86400, 14),
    ],
)
def test_gap_buckets(gap_s: float, bucket: int) -> None:
    event = ev(ts_ms=T0 + round(gap_s * 1000))
    assert field("gap_bucket", event, prev_ts_ms=T0) == tk.OUT_OF_ORDER + 1 + bucket


def test_gap_specials() -> None:
    assert field("gap_bucket", ev(), prev_ts_ms=None) == tk.FIRST == 2
    assert field("gap_bucket", ev(ts_ms=T0 - 1), prev_ts_ms=T0) == tk.OUT_OF_ORDER == 3
    top = field("gap_bucket", ev(ts_ms=T0 + 10**12), prev_ts_ms=T0)
    assert top == VOCAB.field_sizes[4] - 1


@pytest.mark.parametrize(
    ("platform", "token"),
    [("web", 3), ("app", 4), ("partner", 5), ("ios", 4), ("WEB", 3), (None, 2), ("tv", 2)],
)
def test_platform(platform: str | None, token: int) -> None:
    assert field("platform", ev(platform=platform)) == token


def test_no_token_is_pad_or_mask_and_all_fit() -> None:
    events = [
        ev(),
        ev(event_type="zzz", item_id="x", category="y", price=3.0, platform="web"),
        ev(ts_ms=T0 - 5),
    ]
    for event in events:
        for prev in (None, T0, T0 - 10**9):
            tokens = tokenize(event, prev, VOCAB)
            assert all(2 <= t < size for t, size in zip(tokens, VOCAB.field_sizes, strict=True))


def test_lone_surrogate_does_not_raise() -> None:
    assert len(tokenize(ev(item_id="\ud800", category="\udfff"), None, VOCAB)) == 6


def test_version_is_stable_and_short() -> None:
    assert Vocabulary().version == VOCAB.version
    assert len(VOCAB.version) == 12 and int(VOCAB.version, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"item_buckets": 4097},
        {"category_buckets": 256},
        {"price_buckets": 17},
        {"gap_edges_s": (1, 2, 5)},
    ],
)
def test_version_changes_with_any_size(change: dict[str, object]) -> None:
    assert replace(VOCAB, **change).version != VOCAB.version  # type: ignore[arg-type]


def test_version_changes_with_type_order_and_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "EVENT_TYPES", tuple(reversed(tk.EVENT_TYPES)))
    reordered = Vocabulary().version
    monkeypatch.undo()
    monkeypatch.setattr(tk, "SCHEMA", "clickscore-tokens/2")
    reschemed = Vocabulary().version
    monkeypatch.undo()
    assert len({reordered, reschemed, VOCAB.version}) == 3


def test_dict_round_trip() -> None:
    vocab = Vocabulary(item_buckets=1000, price_buckets=8)
    data = vocab.to_dict()
    assert data["version"] == vocab.version and data["schema"] == tk.SCHEMA
    assert data["field_sizes"] == list(vocab.field_sizes)
    again = Vocabulary.from_dict(data)
    assert again == vocab and again.version == vocab.version


def test_from_dict_refuses_other_tokenisation() -> None:
    data = VOCAB.to_dict()
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        Vocabulary.from_dict({**data, "version": "000000000000"})
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        Vocabulary.from_dict({**data, "schema": "clickscore-tokens/0"})


def test_invalid_vocabularies() -> None:
    with pytest.raises(ValueError):
        Vocabulary(item_buckets=70_000)  # tokens are stored as uint16
    with pytest.raises(ValueError):
        Vocabulary(price_buckets=2)
    with pytest.raises(ValueError):
        Vocabulary(gap_edges_s=(5, 1))
