"""Next-event network: what a user will look at next, and whether the next event is a purchase.

Self-contained on purpose (torch and numpy only): the exporter copies this file beside the
weights as `next_event.py`, so a Triton version folder never depends on the checkout.

A causal transformer reads the user's events (item, event type, gap; oldest first, left-padded)
and predicts, at every position, the next event's item and type (SASRec / Transformers4Rec
style: a loss at every position). The item distribution mixes two parts with a learned gate:
a full softmax over the tied item embeddings, and a copy distribution over the items already
in the sequence (shoppers go back to what they just saw: on YooChoose a third of next clicks
are items of the session so far).

Item vocabulary, owned by the model version: the `items` most frequent raw item ids of the
training data get their own ids, every other item shares one of `oov_buckets` hashed ids. The
worker's state keeps, per event, a stable 32-bit hash of the raw item id
(stream.contract.tokenizer.item_hash); `ItemVocabulary.ids` maps those hashes to this
version's ids. So a new version with a new vocabulary reads the states already in the table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

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


@dataclass(frozen=True)
class NextEventConfig:
    known_items: int  # len(ItemVocabulary.items)
    oov_buckets: int
    event_types: int  # stream.contract.tokenizer field sizes of event_type and gap_bucket
    gaps: int
    sequence_length: int = 64
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    purchase_type: int = 8  # the event_type token of a purchase

    @property
    def items(self) -> int:
        """Embedding rows: specials, known items, hashed buckets (ItemVocabulary.size)."""
        return FIRST_ITEM + self.known_items + self.oov_buckets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NextEventConfig:
        return cls(**data)


def leading_padding(types: torch.Tensor) -> int:
    """How many leading columns are padding in every row (the newest column always stays)."""
    used = (types[:, :-1] != PAD).any(dim=0).nonzero()
    return int(used[0]) if used.numel() else types.shape[1] - 1


class NextEventModel(nn.Module):
    def __init__(self, config: NextEventConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.item = nn.Embedding(config.items, h, padding_idx=PAD)
        self.event_type = nn.Embedding(config.event_types, h, padding_idx=PAD)
        self.gap = nn.Embedding(config.gaps, h, padding_idx=PAD)
        self.position = nn.Embedding(config.sequence_length, h)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            h,
            config.heads,
            2 * h,
            config.dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.type_head = nn.Linear(h, config.event_types)
        self.copy_query = nn.Linear(h, h)
        self.copy_key = nn.Linear(h, h)
        self.copy_recency = nn.Embedding(config.sequence_length, h)
        self.copy_gate = nn.Linear(h, 1)
        nn.init.normal_(self.item.weight, std=0.02)

    def encode(self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(batch, length) ids each, left-padded -> (batch, length, hidden), causal."""
        x, mask = self._inputs(items, types, gaps)
        hidden = self.encoder(x, mask=mask)
        out: torch.Tensor = self.norm(hidden)
        return out

    def encode_newest(
        self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor
    ) -> torch.Tensor:
        """encode(...)[:, -1:] for serving: the last layer computes only the newest position
        (its queries; keys and values still cover every event), a third of the encoder."""
        x, mask = self._inputs(items, types, gaps)
        *lower, last = self.encoder.layers
        for layer in lower:
            x = layer(x, src_mask=mask)
        normed = last.norm1(x)
        attended = last.self_attn(
            normed[:, -1:], normed, normed, attn_mask=mask[:, -1:], need_weights=False
        )[0]
        newest = x[:, -1:] + last.dropout1(attended)
        newest = newest + last._ff_block(last.norm2(newest))
        out: torch.Tensor = self.norm(newest)
        return out

    def _inputs(
        self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed embeddings (batch, length, hidden) and the causal attention mask."""
        length = items.shape[1]
        present = types != PAD
        steps = torch.arange(length, device=items.device)
        # Positions count from each row's first event, so padding never shifts them.
        position = (steps.unsqueeze(0) - (~present).sum(1, keepdim=True)).clamp(min=0)
        x = (
            self.item(items) * math.sqrt(self.config.hidden)
            + self.event_type(types)
            + self.gap(gaps)
            + self.position(position)
        )
        blocked = (steps.unsqueeze(0) > steps.unsqueeze(1)).unsqueeze(0) | ~present.unsqueeze(1)
        blocked &= (steps.unsqueeze(0) != steps.unsqueeze(1)).unsqueeze(0)  # a row sees itself
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(blocked, float("-inf"))
        return self.dropout(x), mask.repeat_interleave(self.config.heads, 0)

    def item_log_probs(
        self, items: torch.Tensor, hidden: torch.Tensor, *, last_only: bool = False
    ) -> torch.Tensor:
        """log p(next item) at every position (batch, length, items), or at the newest."""
        length = items.shape[1]
        queries = hidden[:, -1:] if last_only else hidden
        logits = queries @ self.item.weight.T
        logits[..., :FIRST_ITEM] = float("-inf")
        steps = torch.arange(length, device=items.device)
        rows = steps[-1:] if last_only else steps
        lag = (rows.unsqueeze(1) - steps.unsqueeze(0)).clamp(0, self.config.sequence_length - 1)
        q = self.copy_query(queries)
        scores = torch.einsum("bth,bjh->btj", q, self.copy_key(self.item(items)))
        scores = scores + torch.einsum("bth,tjh->btj", q, self.copy_recency(lag))
        usable = (rows.unsqueeze(1) >= steps.unsqueeze(0)).unsqueeze(0)
        usable = usable & (items >= FIRST_ITEM).unsqueeze(1)
        scores = (scores / math.sqrt(self.config.hidden)).masked_fill(~usable, float("-inf"))
        attention = torch.softmax(scores, -1).nan_to_num(0.0)  # nothing to copy: all zeros
        index = items.unsqueeze(1).expand(-1, rows.shape[0], -1)
        copied = torch.zeros_like(logits).scatter_add_(-1, index, attention)
        gate = torch.sigmoid(self.copy_gate(queries)) * usable.any(-1, keepdim=True)
        mixed = (1 - gate) * torch.softmax(logits, -1) + gate * copied
        out = torch.log(mixed.clamp(min=1e-12))
        return out[:, 0] if last_only else out

    def type_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.type_head(hidden)
        return out

    @torch.no_grad()
    def recommend(
        self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k next item ids and their probabilities (batch, k), P(next is a purchase)."""
        first = leading_padding(types)  # columns that are padding in every row cost nothing
        items, types, gaps = items[:, first:], types[:, first:], gaps[:, first:]
        hidden = self.encode_newest(items, types, gaps)
        log_probs = self.item_log_probs(items, hidden, last_only=True)
        # Hashed buckets are not items a shop can show.
        log_probs = log_probs[:, : FIRST_ITEM + self.config.known_items].float()
        top = log_probs.topk(min(k, self.config.known_items), dim=-1)
        kinds = torch.softmax(self.type_logits(hidden[:, -1]).float(), -1)
        return top.indices, top.values.exp(), kinds[:, self.config.purchase_type]
