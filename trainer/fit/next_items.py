"""Which next items to serve: the next-event network, session kNN (V-SkNN) or a blend.

Chosen on validation sessions carved from the end of the training period (never the test
data), on the same positions for every strategy: each next item of a validation sequence,
predicted from the events before it (in pieces of the network's sequence length, as
trainer/fit/next_event_training.py ranks them; the kNN sees the same events). A next item the
vocabulary cannot name is a miss for every strategy.

  1. V-SkNN's weighting is tuned on validation over trainer/baselines/sessions.py's grid, with
     an index of the fitting sessions only (as trainer/evaluate/next_click.py tunes it).
  2. The network (already trained on the fitting sessions, passed in), the tuned kNN, and
     blends of the two (stream/serving/session_knn.py blend_top, the network's share in
     BLEND_WEIGHTS) give their top K on every position.
  3. The rule: the highest HR@K + MRR@K, the sum the network's early stopping and V-SkNN's
     tuning already maximise. HR alone would serve a list that finds the item but buries it
     (Diginetica: V-SkNN's 0.528 HR@20 against the network's 0.351, at a lower MRR); MRR alone
     rewards ranking the session's own items first. Ties go to the simpler strategy
     (network, then session kNN, then the blend with the most network weight).
  4. The served index holds the fitting and the validation sessions (kNN learns nothing, so
     the most recent sessions only help), capped at the `max_sessions` most recent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from stream.serving.session_knn import KnnConfig, SessionIndex, blend_top
from trainer.baselines.sessions import VSKNN_GRID
from trainer.fit.next_event import FIRST_ITEM, ItemVocabulary, NextEventModel
from trainer.fit.next_event_training import MISS, K, ranking
from trainer.labels.sessions import Sequence, windows

log = logging.getLogger(__name__)
BLEND_WEIGHTS = (0.25, 0.5, 0.75)  # the network's share
Ids = npt.NDArray[np.int64]
Top = tuple[Ids, npt.NDArray[np.float32]]


@dataclass
class Positions:
    """Every validation position: the events before it (left-padded) and the next item."""

    items: Ids  # (positions, length) vocabulary ids
    types: Ids
    gaps: Ids
    target: Ids  # (positions,) the next item's id (NO_ITEM-free: positions without one are out)

    def __len__(self) -> int:
        return int(self.target.shape[0])


def positions(seqs: list[Sequence], vocab: ItemVocabulary, length: int) -> Positions:
    rows: list[tuple[Ids, Ids, Ids, int]] = []
    for piece in windows(seqs, length):
        ids = vocab.ids(piece.hashes)
        for t in range(1, len(piece)):
            if piece.hashes[t] == 0:  # an event without an item: nothing to predict
                continue
            rows.append((ids[:t], piece.types[:t], piece.gaps[:t], int(ids[t])))
    grid = np.zeros((3, len(rows), length), dtype=np.int64)
    for r, (items, types, gaps, _) in enumerate(rows):
        n = len(items)
        grid[0, r, length - n :], grid[1, r, length - n :], grid[2, r, length - n :] = (
            items,
            types,
            gaps,
        )
    target = np.array([t for *_, t in rows], dtype=np.int64)
    return Positions(grid[0], grid[1], grid[2], target)


def network_top(model: NextEventModel, p: Positions, k: int, batch: int = 128) -> Top:
    """The network's top k known items and their probabilities, as the served graph ranks."""
    model.eval()
    ids, probs = [], []
    with torch.no_grad():
        for i in range(0, len(p), batch):
            t = [torch.from_numpy(a[i : i + batch]) for a in (p.items, p.types, p.gaps)]
            top_ids, top_probs, _ = model.recommend(t[0], t[1], t[2], k)
            ids.append(top_ids.numpy())
            probs.append(top_probs.numpy())
    if not ids:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(ids).astype(np.int64), np.concatenate(probs).astype(np.float32)


def knn_top(index: SessionIndex, p: Positions, k: int, batch: int = 1024) -> Top:
    parts = [index.recommend(p.items[i : i + batch], k) for i in range(0, len(p), batch)]
    if not parts:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def top_ranks(top_ids: Ids, target: Ids) -> Ids:
    """1-based rank of each target in its row's list, MISS when absent."""
    hit = top_ids == target[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, MISS).astype(np.int64)


def score(top_ids: Ids, target: Ids) -> dict[str, float]:
    return ranking(top_ranks(top_ids, target))


def _total(m: dict[str, float]) -> float:
    return m[f"hr@{K}"] + m[f"mrr@{K}"]


def build_index(
    seqs: Seq[Sequence],
    vocab: ItemVocabulary,
    config: KnnConfig,
    max_sessions: int | None,
) -> SessionIndex:
    return SessionIndex.build(
        [vocab.ids(s.hashes) for s in seqs],
        [s.end_ms for s in seqs],
        [s.key for s in seqs],
        config,
        first_id=FIRST_ITEM,
        end_id=FIRST_ITEM + len(vocab.items),
        max_sessions=max_sessions,
        items=vocab,
    )


def tune_knn(
    fitting: list[Sequence],
    p: Positions,
    vocab: ItemVocabulary,
    max_sessions: int | None,
) -> tuple[SessionIndex, dict[str, float]]:
    """The fitting sessions' index in the V-SkNN config of the grid with the best HR@K + MRR@K
    on the validation positions, and those figures."""
    index = build_index(fitting, vocab, KnnConfig(), max_sessions)
    best: tuple[SessionIndex, dict[str, float]] | None = None
    for grid_config in VSKNN_GRID:
        tried = index.with_config(KnnConfig(**grid_config.__dict__))
        m = score(knn_top(tried, p, K)[0], p.target)
        if best is None or _total(m) > _total(best[1]):
            best = (tried, m)
    assert best is not None
    return best


@dataclass
class NextItemsChoice:
    strategy: str  # "network" | "session_knn" | "blend"
    blend_weight: float | None  # the network's share, for "blend"
    index: SessionIndex  # with the tuned config, over fitting + validation sessions
    validation: dict[str, dict[str, float]]  # strategy name -> hr@K, mrr@K
    positions: int

    @property
    def uses_knn(self) -> bool:
        return self.strategy in ("session_knn", "blend")

    @property
    def uses_network(self) -> bool:
        return self.strategy in ("network", "blend")

    def to_dict(self) -> dict[str, Any]:
        """model_config.json's next_items (less the served k, which the exporter sets)."""
        return {
            "strategy": self.strategy,
            "blend_weight": self.blend_weight,
            "session_knn": self.index.config.to_dict() if self.uses_knn else None,
            "session_knn_sessions": self.index.sessions if self.uses_knn else None,
            "rule": f"highest validation hr@{K} + mrr@{K}",
            "validation_positions": self.positions,
            "validation": self.validation,
        }

    def top(self, model: NextEventModel | None, p: Positions, k: int) -> Top:
        """This strategy's top k on positions (the test data, in `evaluate next-click`)."""
        if self.strategy == "session_knn":
            return knn_top(self.index, p, k)
        assert model is not None
        net = network_top(model, p, k)
        if self.strategy == "network":
            return net
        assert self.blend_weight is not None
        return blend_top(*net, *knn_top(self.index, p, k), self.blend_weight, k)


def choose_next_items(
    network: NextEventModel | None,
    vocab: ItemVocabulary,
    fitting: list[Sequence],
    validation: list[Sequence],
    *,
    sequence_length: int,
    max_sessions: int | None = None,
    blend_weights: Seq[float] = BLEND_WEIGHTS,
) -> NextItemsChoice:
    """The strategy to serve, by the module docstring's rule. `network` was trained on
    `fitting` only (None: no network, session kNN is the only candidate)."""
    p = positions(validation, vocab, sequence_length)
    if not len(p):
        raise ValueError("no validation position has a next item: cannot choose next items")
    tuned, knn_scores = tune_knn(fitting, p, vocab, max_sessions)
    table: dict[str, dict[str, float]] = {}
    candidates: list[tuple[str, float | None]] = []
    if network is not None:
        net = network_top(network, p, K)
        table["network"] = score(net[0], p.target)
        candidates.append(("network", None))
    table["session_knn"] = knn_scores
    candidates.append(("session_knn", None))
    if network is not None:
        knn = knn_top(tuned, p, K)
        for w in sorted(blend_weights, reverse=True):
            table[f"blend_{w:g}"] = score(blend_top(*net, *knn, w, K)[0], p.target)
            candidates.append(("blend", w))
    names = [s if w is None else f"blend_{w:g}" for s, w in candidates]
    best = max(range(len(names)), key=lambda i: (_total(table[names[i]]), -i))
    strategy, weight = candidates[best]
    log.info("next items on %d validation positions: %s -> %s", len(p), table, names[best])
    served_index = build_index([*fitting, *validation], vocab, tuned.config, max_sessions)
    return NextItemsChoice(strategy, weight, served_index, table, len(p))
