"""The scoring network: a small BERT encoder over events, with multi-task heads.

Self-contained on purpose (torch and transformers only): the exporter copies this file beside
the weights as `network.py`, so a Triton version folder never depends on the checkout.

Each event is six tokens (stream/tokenizer.py's FIELDS order); its embedding is the sum of
one embedding per field, and BERT adds the position. Sequences are left-padded, so the newest
event always sits at the last position and is the one the heads read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

PAD = 0  # stream.tokenizer.PAD / MASK (checked by a unit test; not imported, see above)
MASK = 1
ITEM_FIELD = 1
CATEGORY_FIELD = 2
QUANTILES = 101  # anomaly calibration: NLL at the 0th, 1st, ... 100th percentile


@dataclass(frozen=True)
class ModelConfig:
    field_sizes: tuple[int, ...]  # stream.tokenizer.Vocabulary.field_sizes
    sequence_length: int = 64
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 128
    dropout: float = 0.1
    anomaly_last_k: int = 4  # recent events masked to measure the model's surprise

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**{**data, "field_sizes": tuple(data["field_sizes"])})


@dataclass
class Scores:
    churn: torch.Tensor  # (batch,) probabilities
    purchase: torch.Tensor
    anomaly: torch.Tensor  # (batch,) calibrated 0..1
    surprise: torch.Tensor  # (batch,) raw mean NLL of the masked recent events
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class ClickscoreModel(nn.Module):
    anomaly_quantiles: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden
        self.field_embeddings = nn.ModuleList(
            nn.Embedding(size, h, padding_idx=PAD) for size in config.field_sizes
        )
        bert = BertConfig(
            vocab_size=1,  # unused: events come in through inputs_embeds
            hidden_size=h,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.intermediate,
            max_position_embeddings=config.sequence_length,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            type_vocab_size=1,
            attn_implementation="eager",  # the same kernels in training, Triton and tests
        )
        self.encoder = BertModel(bert, add_pooling_layer=False)
        self.churn_head = nn.Linear(h, 1)
        self.purchase_head = nn.Linear(h, 1)
        self.next_item_head = nn.Linear(h, config.field_sizes[ITEM_FIELD])
        self.next_category_head = nn.Linear(h, config.field_sizes[CATEGORY_FIELD])
        self.field_heads = nn.ModuleList(nn.Linear(h, size) for size in config.field_sizes)
        # Surprise -> 0..1 as the empirical CDF over normal users; set by calibrate().
        self.register_buffer("anomaly_quantiles", torch.zeros(QUANTILES))

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch, length, fields) int -> hidden states (batch, length, hidden)."""
        tokens = tokens.long()
        embeds = sum(emb(tokens[:, :, i]) for i, emb in enumerate(self.field_embeddings))  # type: ignore[arg-type]
        present = tokens[:, :, 0] != PAD
        # The newest position always attends, so an empty sequence still has defined output.
        present[:, -1] = True
        out = self.encoder(inputs_embeds=embeds, attention_mask=present.long())
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encode(tokens)
        last = hidden[:, -1]
        return {
            "churn": self.churn_head(last).squeeze(-1),
            "purchase": self.purchase_head(last).squeeze(-1),
            "next_item": self.next_item_head(last),
            "next_category": self.next_category_head(last),
            "hidden": hidden,
        }

    def field_logits(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        return [head(hidden) for head in self.field_heads]

    def surprise(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the true fields of the last k present events, all k masked at once."""
        tokens = tokens.long()
        k = min(self.config.anomaly_last_k, tokens.shape[1])
        recent = tokens[:, -k:]
        present = (recent[:, :, 0] != PAD).to(torch.float32)
        masked = tokens.clone()
        masked[:, -k:] = torch.where(recent[:, :, :1] != PAD, MASK, recent)
        hidden = self.encode(masked)[:, -k:]
        nll = torch.zeros(recent.shape[:2], dtype=torch.float32, device=hidden.device)
        for i, logits in enumerate(self.field_logits(hidden)):
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll = nll - logp.gather(-1, recent[:, :, i : i + 1]).squeeze(-1)
        nll = nll / len(self.field_heads)
        return (nll * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)

    def calibrate(self, normal_surprise: torch.Tensor) -> None:
        grid = torch.linspace(0.0, 1.0, QUANTILES, dtype=torch.float64)
        quantiles = torch.quantile(normal_surprise.double().cpu(), grid)
        self.anomaly_quantiles.copy_(quantiles.to(self.anomaly_quantiles.dtype))

    def calibrated(self, surprise: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear empirical CDF through the stored quantiles."""
        q = self.anomaly_quantiles.to(torch.float32)
        s = surprise.to(torch.float32).contiguous()
        idx = torch.searchsorted(q, s).clamp(1, QUANTILES - 1)
        lo, hi = q[idx - 1], q[idx]
        frac = ((s - lo) / (hi - lo).clamp(min=1e-6)).clamp(0.0, 1.0)
        cdf = (idx - 1 + frac) / (QUANTILES - 1)
        return torch.where(s <= q[0], torch.zeros_like(cdf), cdf.clamp(0.0, 1.0))

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> Scores:
        out = self.forward(tokens)
        surprise = self.surprise(tokens)
        return Scores(
            churn=torch.sigmoid(out["churn"].float()),
            purchase=torch.sigmoid(out["purchase"].float()),
            anomaly=self.calibrated(surprise.float()),
            surprise=surprise.float(),
        )
