"""Training the next-event network: epochs, early stopping on held-out sequences, then a refit.

Early stopping reads HR@20 + MRR@20 of the next item on the validation sequences (the last
`validation_fraction` of the training period, by end time). The best epoch count is then
trained again from scratch on all the training sequences, so the most recent behaviour,
which matters most for what comes next, is not left out of the served model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from trainer.fit.next_event import (
    FIRST_ITEM,
    PAD,
    ItemVocabulary,
    NextEventConfig,
    NextEventModel,
)
from trainer.labels.sessions import Sequence, batches, split_by_end, windows

log = logging.getLogger(__name__)
K = 20


@dataclass(frozen=True)
class NextTrainConfig:
    max_epochs: int = 60
    patience: int = 5  # epochs without a better validation score before stopping
    batch_size: int = 128
    learning_rate: float = 2e-3
    type_loss_weight: float = 0.5
    validation_fraction: float = 0.15
    refit: bool = True  # train again on all sequences for the best epoch count
    seed: int = 0
    # One thread: on a shared 2-core machine two OpenMP threads stall each other.
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitReport:
    best_epoch: int = 0
    epochs_run: int = 0
    validation: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MISS = 1 << 30  # the rank of an item the vocabulary cannot name


def ranks(
    model: NextEventModel,
    seqs: list[Sequence],
    vocab: ItemVocabulary,
    length: int,
    *,
    unknown_as_miss: bool = False,
) -> npt.NDArray[np.int64]:
    """1-based rank of every next item among the known items. A next item in a hashed bucket
    is skipped, or with unknown_as_miss counted as a miss (no model could name it)."""
    model.eval()
    known_end = FIRST_ITEM + len(vocab.items)
    found: list[torch.Tensor] = []
    with torch.no_grad():
        for b in batches(windows(seqs, length), vocab, 256):
            log_probs = model.item_log_probs(b.items, model.encode(b.items, b.types, b.gaps))
            log_probs = log_probs[..., :known_end]
            known = (b.next_items >= FIRST_ITEM) & (b.next_items < known_end)
            target = log_probs.gather(-1, b.next_items.clamp(max=known_end - 1).unsqueeze(-1))
            rank = torch.where(
                known, (log_probs > target.squeeze(-1).unsqueeze(-1)).sum(-1) + 1, MISS
            )
            scored = (b.next_items >= FIRST_ITEM) if unknown_as_miss else known
            found.append(rank[scored])
    return torch.cat(found).numpy() if found else np.zeros(0, dtype=np.int64)


def ranking(rank: npt.NDArray[np.int64]) -> dict[str, float]:
    hit = rank <= K
    return {
        f"hr@{K}": float(hit.mean()) if rank.size else 0.0,
        f"mrr@{K}": float(np.where(hit, 1.0 / rank, 0.0).mean()) if rank.size else 0.0,
    }


def _epoch(
    model: NextEventModel,
    optimizer: torch.optim.Optimizer,
    seqs: list[Sequence],
    vocab: ItemVocabulary,
    config: NextTrainConfig,
    generator: torch.Generator,
) -> float:
    model.train()
    total, count = 0.0, 0
    for b in batches(seqs, vocab, config.batch_size, generator):
        hidden = model.encode(b.items, b.types, b.gaps)
        present = b.next_types != PAD
        loss = config.type_loss_weight * F.cross_entropy(
            model.type_logits(hidden)[present], b.next_types[present]
        )
        has_item = b.next_items >= FIRST_ITEM
        if has_item.any():
            log_probs = model.item_log_probs(b.items, hidden)
            loss = loss + F.nll_loss(log_probs[has_item], b.next_items[has_item])
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += float(loss.detach()) * int(present.sum())
        count += int(present.sum())
    return total / max(count, 1)


def _train(
    model_config: NextEventConfig,
    config: NextTrainConfig,
    train: list[Sequence],
    vocab: ItemVocabulary,
    epochs: int,
    validation: list[Sequence] | None,
    report: FitReport,
) -> NextEventModel:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = NextEventModel(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    pieces = windows(train, model_config.sequence_length)
    best_score, best_state = -1.0, None
    for epoch in range(epochs):
        loss = _epoch(model, optimizer, pieces, vocab, config, generator)
        report.epochs_run += 1
        if validation is None:
            log.info("epoch %d loss %.3f", epoch, loss)
            continue
        scores = ranking(ranks(model, validation, vocab, model_config.sequence_length))
        report.validation.append(scores)
        log.info("epoch %d loss %.3f validation %s", epoch, loss, scores)
        score = scores[f"hr@{K}"] + scores[f"mrr@{K}"]
        if score > best_score:
            best_score, report.best_epoch = score, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - report.best_epoch >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


def fit(
    model_config: NextEventConfig,
    config: NextTrainConfig,
    train: list[Sequence],
    vocab: ItemVocabulary,
) -> tuple[NextEventModel, FitReport]:
    """Early stopping on the latest sequences, then (refit) all of them for that many epochs."""
    torch.set_num_threads(config.threads)
    started, cpu = time.perf_counter(), time.process_time()
    report = FitReport()
    fitting, validation = split_by_end(train, config.validation_fraction)
    model = _train(model_config, config, fitting, vocab, config.max_epochs, validation, report)
    if config.refit:
        model = _train(model_config, config, train, vocab, report.best_epoch + 1, None, report)
    report.seconds = time.perf_counter() - started
    report.cpu_seconds = time.process_time() - cpu
    return model, report
