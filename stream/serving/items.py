"""The item vocabulary of a version's next items (numpy only: read by the trainer and at serving).

Item vocabulary, owned by the model version: the `items` most frequent raw item ids of the
training data get their own ids, every other item shares one of `oov_buckets` hashed ids. The
worker's state keeps, per event, a stable 32-bit hash of the raw item id
(stream.contract.tokenizer.item_hash); `ItemVocabulary.ids` maps those hashes to this
version's ids. So a new version with a new vocabulary reads the states already in the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

PAD = 0  # no event
NO_ITEM = 1  # an event without an item (search, login), or a state older than item hashes
FIRST_ITEM = 2


@dataclass(frozen=True)
class ItemVocabulary:
    """ids FIRST_ITEM.. for `items` (most frequent first), then `oov_buckets` hashed ids."""

    items: tuple[str, ...]
    hashes: tuple[int, ...]  # item_hash of each item, same order
    oov_buckets: int = 64
    # A sorted copy of the hashes for the lookup, built once.
    _sorted_hashes: npt.NDArray[np.int64] = field(init=False, repr=False, compare=False)
    _sorted_ids: npt.NDArray[np.int64] = field(init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Embedding rows: specials, items, out-of-vocabulary buckets."""
        return FIRST_ITEM + len(self.items) + self.oov_buckets

    def __post_init__(self) -> None:
        if len(self.items) != len(self.hashes) or self.oov_buckets < 1:
            raise ValueError("one hash per item and at least one out-of-vocabulary bucket")
        hashes = np.asarray(self.hashes, dtype=np.int64)
        # Two items with one hash: the more frequent (earlier) one keeps it.
        order = np.argsort(hashes, kind="stable")
        # A sentinel above every 32-bit hash keeps the lookup in bounds, even when empty.
        sorted_hashes = np.append(hashes[order], 1 << 40)
        sorted_ids = np.append(order + FIRST_ITEM, NO_ITEM).astype(np.int64)
        object.__setattr__(self, "_sorted_hashes", sorted_hashes)
        object.__setattr__(self, "_sorted_ids", sorted_ids)

    def ids(self, hashes: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int64]:
        """Item hashes (0: no item) -> this vocabulary's ids, any shape."""
        h = np.asarray(hashes, dtype=np.int64)
        where = np.searchsorted(self._sorted_hashes, h)
        known = self._sorted_hashes[where] == h
        oov = FIRST_ITEM + len(self.items) + h % self.oov_buckets
        out = np.where(known, self._sorted_ids[where], oov)
        return np.where(h == 0, NO_ITEM, out).astype(np.int64)

    def item_of(self, item_id: int) -> str | None:
        """The raw item id of a vocabulary id; None for specials and hashed buckets."""
        k = item_id - FIRST_ITEM
        return self.items[k] if 0 <= k < len(self.items) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": list(self.items),
            "hashes": list(self.hashes),
            "oov_buckets": self.oov_buckets,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemVocabulary:
        return cls(
            items=tuple(str(i) for i in data["items"]),
            hashes=tuple(int(h) for h in data["hashes"]),
            oov_buckets=int(data["oov_buckets"]),
        )
