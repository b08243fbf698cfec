"""The scoring network: a small BERT encoder over events, with multi-task heads.

Export-friendly (trainer/export/onnx.py): no in-place op on an input and no data-dependent
shape on the served path, so the legacy ONNX exporter traces it at a fixed sequence length
with a dynamic batch. Padding is handled by the attention mask; the anomaly calibration
(`calibrated`, a searchsorted) stays outside the exported graph, which outputs the raw
surprise: stream/serving/version.py applies the version's quantiles with numpy.

Each event is six tokens (stream/contract/tokenizer.py's FIELDS order); its embedding is the sum of
one embedding per field, and BERT adds the position. Sequences are left-padded, so the newest
event always sits at the last position and is the one the heads read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

PAD = 0  # stream.contract.tokenizer.PAD / MASK (checked by a unit test; not imported, see above)
MASK = 1
ITEM_FIELD = 1
CATEGORY_FIELD = 2
# Anomaly calibration: the surprise of normal traffic at these quantile levels (dense in the
# tail, where alerts are decided) is stored with the weights. The level maps to the score
# level ** ANOMALY_EXPONENT, chosen so that only the top ALERT_TAIL of normal traffic scores
# ALERT_SCORE or more: a plain CDF would put 5 % of normal users above 0.95, far too many
# alerts for a product. Above the most surprising normal state the score is 1.
ANOMALY_LEVELS = (*(i / 100 for i in range(99)), 0.99, 0.995, 0.998, 0.999, 0.9995, 1.0)
QUANTILES = len(ANOMALY_LEVELS)
ALERT_SCORE = 0.95  # stream.settings anomaly_alert_threshold's default
ALERT_TAIL = 0.001
ANOMALY_EXPONENT = math.log(ALERT_SCORE) / math.log(1.0 - ALERT_TAIL)


@dataclass(frozen=True)
class ModelConfig:
    field_sizes: tuple[int, ...]  # stream.contract.tokenizer.Vocabulary.field_sizes
    sequence_length: int = 64
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 128
    dropout: float = 0.1
    anomaly_last_k: int = 4  # recent events masked to measure the model's surprise
    # In training, hide an event's item and category from the encoder with this chance: with
    # a few hundred users, these ids let the score heads memorise who churned (train ROC-AUC
    # 0.92, held-out 0.6) instead of learning how people behave before they leave or buy.
    identity_dropout: float = 0.0

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


def leading_padding(tokens: torch.Tensor) -> int:
    """How many leading columns are padding in every row (the newest column always stays)."""
    used = (tokens[:, :-1, 0] != PAD).any(dim=0).nonzero()
    return int(used[0]) if used.numel() else tokens.shape[1] - 1


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
        # The score heads read the newest event and the mean over all present events: the
        # mean is a learned summary of the whole window (how many carts, which gaps), which
        # the newest position alone learnt slowly from the little labelled data there is.
        self.churn_head = nn.Linear(2 * h, 1)
        self.purchase_head = nn.Linear(2 * h, 1)
        self.next_item_head = nn.Linear(h, config.field_sizes[ITEM_FIELD])
        self.next_category_head = nn.Linear(h, config.field_sizes[CATEGORY_FIELD])
        self.field_heads = nn.ModuleList(nn.Linear(h, size) for size in config.field_sizes)
        # Surprise -> 0..1 through normal traffic's quantiles; set by calibrate().
        self.register_buffer("anomaly_quantiles", torch.zeros(QUANTILES))

    def encode(self, tokens: torch.Tensor, first_position: int = 0) -> torch.Tensor:
        """tokens (batch, length, fields) int -> hidden states (batch, length, hidden).

        `first_position` is the position of the first column: `score` drops the columns that
        are padding in every row and passes how many it dropped, so each event keeps the
        position embedding it was trained with.
        """
        tokens = tokens.long()
        if self.training and self.config.identity_dropout:
            hide = torch.rand(tokens.shape[:2], device=tokens.device) < self.config.identity_dropout
            fields = torch.arange(tokens.shape[2], device=tokens.device)
            hide = hide.unsqueeze(-1) & (fields > 0) & (fields <= CATEGORY_FIELD)
            tokens = tokens.masked_fill(hide & (tokens != PAD), MASK)
        embeds = sum(emb(tokens[:, :, i]) for i, emb in enumerate(self.field_embeddings))  # type: ignore[arg-type]
        # The newest position always attends, so an empty sequence still has defined output.
        newest = torch.arange(tokens.shape[1], device=tokens.device) == tokens.shape[1] - 1
        present = (tokens[:, :, 0] != PAD) | newest
        positions = torch.arange(tokens.shape[1], device=tokens.device) + first_position
        out = self.encoder(
            inputs_embeds=embeds,
            attention_mask=present.long(),
            position_ids=positions.unsqueeze(0).expand(tokens.shape[0], -1),
        )
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def forward(self, tokens: torch.Tensor, first_position: int = 0) -> dict[str, torch.Tensor]:
        hidden = self.encode(tokens, first_position)
        last = hidden[:, -1]
        present = (tokens[:, :, 0] != PAD).unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)
        summary = torch.cat([last, mean], dim=-1)
        return {
            "churn": self.churn_head(summary).squeeze(-1),
            "purchase": self.purchase_head(summary).squeeze(-1),
            "next_item": self.next_item_head(last),
            "next_category": self.next_category_head(last),
            "hidden": hidden,
        }

    def field_logits(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        return [head(hidden) for head in self.field_heads]

    def surprise(self, tokens: torch.Tensor, first_position: int = 0) -> torch.Tensor:
        """Mean NLL of the true fields of the last k present events, all k masked at once."""
        tokens = tokens.long()
        k = min(self.config.anomaly_last_k, tokens.shape[1])
        recent = tokens[:, -k:]
        present = (recent[:, :, 0] != PAD).to(torch.float32)
        masked = torch.cat([tokens[:, :-k], torch.where(recent[:, :, :1] != PAD, MASK, recent)], 1)
        hidden = self.encode(masked, first_position)[:, -k:]
        nll = torch.zeros(recent.shape[:2], dtype=torch.float32, device=hidden.device)
        for i, logits in enumerate(self.field_logits(hidden)):
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll = nll - logp.gather(-1, recent[:, :, i : i + 1]).squeeze(-1)
        nll = nll / len(self.field_heads)
        return (nll * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)

    def calibrate(self, normal_surprise: torch.Tensor) -> None:
        levels = torch.tensor(ANOMALY_LEVELS, dtype=torch.float64)
        quantiles = torch.quantile(normal_surprise.double().cpu(), levels)
        self.anomaly_quantiles.copy_(quantiles.to(self.anomaly_quantiles.dtype))

    def calibrated(self, surprise: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear through (quantile, level ** ANOMALY_EXPONENT); 1 above the top."""
        q = self.anomaly_quantiles.to(torch.float32)
        levels = torch.tensor(ANOMALY_LEVELS, dtype=torch.float32, device=q.device)
        marks = levels.pow(ANOMALY_EXPONENT)
        s = surprise.to(torch.float32).contiguous()
        idx = torch.searchsorted(q, s).clamp(1, QUANTILES - 1)
        lo, hi = q[idx - 1], q[idx]
        frac = ((s - lo) / (hi - lo).clamp(min=1e-6)).clamp(0.0, 1.0)
        score = marks[idx - 1] + frac * (marks[idx] - marks[idx - 1])
        score = torch.where(s <= q[0], torch.zeros_like(score), score)
        return torch.where(s > q[-1], torch.ones_like(score), score.clamp(0.0, 1.0))

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> Scores:
        # Left padding that every row shares changes no output (padded keys are masked out
        # of attention), so it is not computed: a batch of short sequences costs what they
        # hold. (Grouping rows by length as well was slower on the CPU: every group pays
        # the encoder's fixed cost of about 6 ms; see BENCHMARKS.md.)
        first = leading_padding(tokens)
        tokens = tokens[:, first:]
        out = self.forward(tokens, first)
        surprise = self.surprise(tokens, first)
        return Scores(
            churn=torch.sigmoid(out["churn"].float()),
            purchase=torch.sigmoid(out["purchase"].float()),
            anomaly=self.calibrated(surprise.float()),
            surprise=surprise.float(),
        )
