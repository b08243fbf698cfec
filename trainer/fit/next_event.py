"""Next-event network: what a user will look at next, and whether the next event is a purchase.

Export-friendly (trainer/export/onnx.py): no in-place op and no data-dependent shape on the
served path (`top_items`), so it exports to ONNX at a fixed length with a dynamic batch.

A causal transformer reads the user's events (item, event type, gap; oldest first, left-padded)
and predicts, at every position, the next event's item and type (SASRec / Transformers4Rec
style: a loss at every position). The item distribution mixes two parts with a learned gate:
a full softmax over the tied item embeddings, and a copy distribution over the items already
in the sequence (shoppers go back to what they just saw: on YooChoose a third of next clicks
are items of the session so far).

The item vocabulary (stream/serving/items.py) maps the worker's per-event item hashes to this
network's item ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# Re-exported: the item vocabulary is also read at serving time, where torch is not imported.
from stream.serving.items import FIRST_ITEM, NO_ITEM, PAD, ItemVocabulary

__all__ = ["FIRST_ITEM", "NO_ITEM", "PAD", "ItemVocabulary", "NextEventConfig", "NextEventModel"]


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
        blocked = blocked & (steps.unsqueeze(0) != steps.unsqueeze(1)).unsqueeze(0)  # sees itself
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(blocked, float("-inf"))
        return self.dropout(x), mask.repeat_interleave(self.config.heads, 0)

    def item_log_probs(
        self, items: torch.Tensor, hidden: torch.Tensor, *, last_only: bool = False
    ) -> torch.Tensor:
        """log p(next item) at every position (batch, length, items), or at the newest."""
        length = items.shape[1]
        queries = hidden[:, -1:] if last_only else hidden
        special = torch.arange(self.item.weight.shape[0], device=items.device) < FIRST_ITEM
        logits = (queries @ self.item.weight.T).masked_fill(special, float("-inf"))
        steps = torch.arange(length, device=items.device)
        rows = steps[-1:] if last_only else steps
        lag = (rows.unsqueeze(1) - steps.unsqueeze(0)).clamp(0, self.config.sequence_length - 1)
        q = self.copy_query(queries)
        scores = torch.einsum("bth,bjh->btj", q, self.copy_key(self.item(items)))
        scores = scores + torch.einsum("bth,tjh->btj", q, self.copy_recency(lag))
        usable = (rows.unsqueeze(1) >= steps.unsqueeze(0)).unsqueeze(0)
        usable = usable & (items >= FIRST_ITEM).unsqueeze(1)
        scores = (scores / math.sqrt(self.config.hidden)).masked_fill(~usable, float("-inf"))
        attention = torch.softmax(scores, -1)
        attention = torch.where(attention.isnan(), 0.0, attention)  # nothing to copy: all zeros
        index = items.unsqueeze(1).expand(-1, rows.shape[0], -1)
        copied = torch.zeros_like(logits).scatter_add(-1, index, attention)
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
        return self.top_items(items[:, first:], types[:, first:], gaps[:, first:], k)

    def top_items(
        self, items: torch.Tensor, types: torch.Tensor, gaps: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`recommend` at the full length: padding is masked, never sliced off, so this is the
        graph trainer/export/onnx.py exports (the same numbers, up to float rounding)."""
        hidden = self.encode_newest(items, types, gaps)
        log_probs = self.item_log_probs(items, hidden, last_only=True)
        # Specials and hashed buckets are not items a shop can show (a row whose mass all
        # went to a bucket ties every item at the floor: a special must not win the tie).
        log_probs = log_probs[:, FIRST_ITEM : FIRST_ITEM + self.config.known_items].float()
        top = log_probs.topk(min(k, self.config.known_items), dim=-1)
        kinds = torch.softmax(self.type_logits(hidden[:, -1]).float(), -1)
        return top.indices + FIRST_ITEM, top.values.exp(), kinds[:, self.config.purchase_type]
