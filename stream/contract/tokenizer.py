"""Event -> six small integer tokens. The worker and the trainer both import this module, so
what the model was trained on and what it is served can never drift apart; `Vocabulary.version`
is exported with every model and checked when it is loaded.

Every field reserves ids 0 PAD, 1 MASK (for masked-event pre-training) and 2 (OTHER / NONE /
FIRST, see below); real values start at 3.

    event_type       2 OTHER (unknown type), then EVENT_TYPES in order; see EVENT_TYPE_ALIASES
    item_bucket      2 NONE, then crc32(item_id) % item_buckets
    category_bucket  2 NONE, then crc32(category) % category_buckets
    price_bucket     2 NONE, then log-scale price_buckets: < 1, 1 .. 10 000 in log steps, >= 10 000
    gap_bucket       2 FIRST (no previous event), 3 OUT_OF_ORDER (older than the previous event),
                     then one bucket per range of GAP_EDGES_S:
                     0-1 s, 1-2 s, 2-5 s, 5-15 s, 15-60 s, 1-5 min, 5-15 min, 15-60 min, 1-3 h,
                     3-12 h, 12-24 h, 1-3 d, 3-7 d, 7-30 d, > 30 d (lower edge inclusive)
    platform         2 OTHER (unknown or missing), then PLATFORMS; see PLATFORM_ALIASES

crc32, not hash(): Python salts str hashes per process, which would re-bucket every item on
each restart.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any
from zlib import crc32

import orjson

from stream.contract.events import Event

# Bump when the meaning of a token changes in a way the fields below do not capture.
SCHEMA = "clickscore-tokens/1"

FIELDS: tuple[str, ...] = (
    "event_type",
    "item_bucket",
    "category_bucket",
    "price_bucket",
    "gap_bucket",
    "platform",
)
NUM_FIELDS = 6

PAD = 0
MASK = 1
OTHER = 2  # also NONE (missing value) and FIRST (no previous event)
NONE = 2
FIRST = 2
OUT_OF_ORDER = 3
NUM_SPECIAL = 3

EVENT_TYPES: tuple[str, ...] = (
    "view",
    "search",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "login",
    "logout",
    "add_to_wishlist",
)
# Names shop platforms and trackers commonly send for the same action.
EVENT_TYPE_ALIASES: dict[str, str] = {
    "pv": "view",
    "page_view": "view",
    "pageview": "view",
    "product_view": "view",
    "detail": "view",
    "query": "search",
    "tap": "click",
    "cart": "add_to_cart",
    "addtocart": "add_to_cart",
    "add-to-cart": "add_to_cart",
    "add2cart": "add_to_cart",
    "removefromcart": "remove_from_cart",
    "remove-from-cart": "remove_from_cart",
    "buy": "purchase",
    "transaction": "purchase",
    "order": "purchase",
    "checkout_complete": "purchase",
    "sign_in": "login",
    "signin": "login",
    "log_in": "login",
    "sign_out": "logout",
    "signout": "logout",
    "log_out": "logout",
    "fav": "add_to_wishlist",
    "favorite": "add_to_wishlist",
    "favourite": "add_to_wishlist",
    "wishlist": "add_to_wishlist",
}

PLATFORMS: tuple[str, ...] = ("web", "app", "partner")
PLATFORM_ALIASES: dict[str, str] = {
    "desktop": "web",
    "mweb": "web",
    "mobile_web": "web",
    "ios": "app",
    "android": "app",
    "mobile_app": "app",
    "affiliate": "partner",
    "api": "partner",
}

PRICE_MIN = 1.0
PRICE_MAX = 10_000.0
GAP_EDGES_S: tuple[int, ...] = (
    1,
    2,
    5,
    15,
    60,
    5 * 60,
    15 * 60,
    3600,
    3 * 3600,
    12 * 3600,
    86_400,
    3 * 86_400,
    7 * 86_400,
    30 * 86_400,
)
_UINT16_VALUES = 1 << 16  # tokens are stored as uint16 in the per-user state


def _price_edges(buckets: int) -> tuple[float, ...]:
    # buckets - 1 edges: the lowest bucket is "< PRICE_MIN", the highest ">= PRICE_MAX".
    steps = buckets - 2
    ratio = math.log(PRICE_MAX / PRICE_MIN)
    # Rounded so the edges (and so the version hash) cannot depend on libm's last bit.
    return tuple(float(f"{PRICE_MIN * math.exp(ratio * i / steps):.6g}") for i in range(steps + 1))


@dataclass(frozen=True)
class Vocabulary:
    item_buckets: int = 4096
    category_buckets: int = 512
    price_buckets: int = 16
    gap_edges_s: tuple[int, ...] = GAP_EDGES_S

    # Lookup tables built once; tokenize() only does dict lookups and bisects.
    _type_ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _platform_ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _price_edges: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _gap_edges_ms: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _version: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.price_buckets < 3:
            raise ValueError("price_buckets must be at least 3")
        if self.item_buckets < 1 or self.category_buckets < 1:
            raise ValueError("item_buckets and category_buckets must be positive")
        edges = tuple(self.gap_edges_s)
        if not edges or any(b <= a for a, b in pairwise(edges)):
            raise ValueError("gap_edges_s must be non-empty and strictly increasing")
        object.__setattr__(self, "gap_edges_s", edges)
        if max(self.field_sizes) > _UINT16_VALUES:
            raise ValueError(f"every field must fit in uint16, sizes {self.field_sizes}")

        type_ids = {name: NUM_SPECIAL + i for i, name in enumerate(EVENT_TYPES)}
        type_ids.update({alias: type_ids[name] for alias, name in EVENT_TYPE_ALIASES.items()})
        platform_ids = {name: NUM_SPECIAL + i for i, name in enumerate(PLATFORMS)}
        platform_ids.update({a: platform_ids[name] for a, name in PLATFORM_ALIASES.items()})
        object.__setattr__(self, "_type_ids", type_ids)
        object.__setattr__(self, "_platform_ids", platform_ids)
        object.__setattr__(self, "_price_edges", _price_edges(self.price_buckets))
        object.__setattr__(self, "_gap_edges_ms", tuple(s * 1000 for s in edges))
        object.__setattr__(self, "_version", self._compute_version())

    @property
    def gap_buckets(self) -> int:
        """Real gap buckets: OUT_OF_ORDER plus one per range between edges."""
        return len(self.gap_edges_s) + 2

    @property
    def field_sizes(self) -> tuple[int, ...]:
        """Vocabulary size per field, specials included, in FIELDS order."""
        return (
            NUM_SPECIAL + len(EVENT_TYPES),
            NUM_SPECIAL + self.item_buckets,
            NUM_SPECIAL + self.category_buckets,
            NUM_SPECIAL + self.price_buckets,
            NUM_SPECIAL + self.gap_buckets,
            NUM_SPECIAL + len(PLATFORMS),
        )

    @property
    def version(self) -> str:
        """Short stable hash of everything that decides a token."""
        return self._version

    def _spec(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "fields": list(FIELDS),
            "hash": "crc32-utf8",
            "event_types": list(EVENT_TYPES),
            "event_type_aliases": EVENT_TYPE_ALIASES,
            "platforms": list(PLATFORMS),
            "platform_aliases": PLATFORM_ALIASES,
            "item_buckets": self.item_buckets,
            "category_buckets": self.category_buckets,
            "price_buckets": self.price_buckets,
            "price_edges": list(self._price_edges),
            "gap_edges_s": list(self.gap_edges_s),
            "field_sizes": list(self.field_sizes),
        }

    def _compute_version(self) -> str:
        blob = orjson.dumps(self._spec(), option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(blob, digest_size=6).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The full spec plus its version, for exporting next to a model."""
        return {**self._spec(), "version": self.version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Rebuild from `to_dict()`; refuses a spec this code would tokenise differently."""
        vocab = cls(
            item_buckets=int(data["item_buckets"]),
            category_buckets=int(data["category_buckets"]),
            price_buckets=int(data["price_buckets"]),
            gap_edges_s=tuple(int(s) for s in data["gap_edges_s"]),
        )
        if data.get("schema") != SCHEMA or data.get("version") != vocab.version:
            raise ValueError(
                f"tokenizer mismatch: exported {data.get('schema')} {data.get('version')}, "
                f"this code {SCHEMA} {vocab.version}"
            )
        return vocab


def item_hash(item_id: str | None) -> int:
    """A stable 32-bit hash of a raw item id, 0 for none: what the state keeps per event so
    that each model version maps items to its own vocabulary. crc32 like the item bucket; an
    id whose crc32 is 0 is taken as 1."""
    if item_id is None:
        return 0
    return crc32(item_id.encode("utf-8", "surrogatepass")) or 1


def tokenize(event: Event, prev_ts_ms: int | None, vocab: Vocabulary) -> tuple[int, ...]:
    """Six tokens in FIELDS order. prev_ts_ms: the user's previous event time, None if first."""
    event_type = vocab._type_ids.get(event.event_type)
    if event_type is None:
        event_type = vocab._type_ids.get(event.event_type.strip().lower(), OTHER)

    item = event.item_id
    if item is None:
        item_token = NONE
    else:
        # surrogatepass: an Event built by hand may hold lone surrogates; never raise here.
        item_token = NUM_SPECIAL + crc32(item.encode("utf-8", "surrogatepass")) % vocab.item_buckets

    category = event.category
    if category is None:
        category_token = NONE
    else:
        category_token = NUM_SPECIAL + (
            crc32(category.encode("utf-8", "surrogatepass")) % vocab.category_buckets
        )

    price = event.price
    price_token = NONE if price is None else NUM_SPECIAL + bisect_right(vocab._price_edges, price)

    if prev_ts_ms is None:
        gap_token = FIRST
    else:
        gap_ms = event.ts_ms - prev_ts_ms
        gap_token = (
            OUT_OF_ORDER
            if gap_ms < 0
            else OUT_OF_ORDER + 1 + bisect_right(vocab._gap_edges_ms, gap_ms)
        )

    platform = event.platform
    if platform is None:
        platform_token = OTHER
    else:
        platform_token = vocab._platform_ids.get(platform, OTHER)
        if platform_token == OTHER:
            platform_token = vocab._platform_ids.get(platform.strip().lower(), OTHER)

    return (event_type, item_token, category_token, price_token, gap_token, platform_token)
