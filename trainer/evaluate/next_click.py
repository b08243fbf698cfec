"""The next-click protocol (session-rec's): train on TRAIN's sessions, then predict every next
click of each TEST session from its earlier clicks, on real item ids.

Test clicks on items never seen in training are dropped first, then sessions left with fewer
than two clicks. Every model is scored on the same positions: HR@20 (the next click is among
the 20 recommended items) and MRR@20 (1 / its rank there, 0 beyond). Everything tuned is tuned
on a validation split carved from the end of TRAIN, never on TEST: the model's epoch count
(early stopping) and V-SkNN's weighting (a small grid).

`served` is what `clickscore train` would serve for next items (trainer/fit/next_items.py):
the network, session kNN or a blend, chosen on that validation split with the early-stopped
network (the pipeline serves it without a refit), then scored on TEST with that network and a
kNN index of all TRAIN sessions. `model` is the network refitted on all of TRAIN, as before.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract.events import Event
from stream.contract.tokenizer import EVENT_TYPES, NUM_SPECIAL, Vocabulary
from stream.datasets.loaders import load, sort_by_time
from trainer.baselines import sessions as baselines
from trainer.fit.next_event import ItemVocabulary, NextEventConfig, NextEventModel
from trainer.fit.next_event_training import K, NextTrainConfig, _train, fit, ranking, ranks
from trainer.fit.next_items import NextItemsChoice, choose_next_items, positions, top_ranks
from trainer.labels import sessions as data

log = logging.getLogger(__name__)
PURCHASE_TYPE = NUM_SPECIAL + EVENT_TYPES.index("purchase")


@dataclass(frozen=True)
class NextClickArgs:
    format: str
    train: Path
    test: Path | None = None
    test_fraction: float = 0.2  # without a TEST file: TRAIN's sessions that start last
    items: int = 50_000  # item vocabulary size
    oov_buckets: int = 64
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.5  # validation on YooChoose: 0.2 < 0.3 < 0.4 < 0.5 (HR@20 + MRR@20)
    knn_max_sessions: int | None = 50_000  # TrainerSettings.session_knn_max_sessions
    train_config: NextTrainConfig = field(default_factory=NextTrainConfig)


@dataclass
class NextClickResult:
    positions: int
    models: dict[str, dict[str, Any]]
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"positions": self.positions, "models": self.models}
        if "next_items" in self.details:
            out["next_items"] = self.details["next_items"]
        return out


def model_config(vocab: ItemVocabulary, tokens: Vocabulary, args: NextClickArgs) -> NextEventConfig:
    sizes = tokens.field_sizes
    return NextEventConfig(
        known_items=len(vocab.items),
        oov_buckets=vocab.oov_buckets,
        event_types=sizes[data.EVENT_TYPE],
        gaps=sizes[data.GAP],
        hidden=args.hidden,
        layers=args.layers,
        dropout=args.dropout,
        purchase_type=PURCHASE_TYPE,
    )


def _split(args: NextClickArgs) -> tuple[list[Event], list[Event]]:
    train = sort_by_time(load(args.format, args.train))
    if args.test is not None:
        return train, sort_by_time(load(args.format, args.test))
    # One file: the sessions that start in its last test_fraction are the later, held-out ones.
    starts: dict[str, int] = {}
    for e in train:
        starts.setdefault(e.session_id or e.user_id, e.ts_ms)
    cut = float(np.quantile(list(starts.values()), 1 - args.test_fraction))
    late = {s for s, t in starts.items() if t >= cut}
    return (
        [e for e in train if (e.session_id or e.user_id) not in late],
        [e for e in train if (e.session_id or e.user_id) in late],
    )


def _sessions(seqs: list[data.Sequence]) -> dict[str, baselines.Session]:
    return {s.key: ([i for i in s.raw_items if i is not None], s.end_ms) for s in seqs}


def _baseline_ranks(model: Any, seqs: list[data.Sequence]) -> np.ndarray[Any, Any]:
    found: list[int] = []
    for s in seqs:
        for t in range(1, len(s)):
            target = s.raw_items[t]
            if target is None:
                continue
            prefix = [i for i in s.raw_items[:t] if i is not None]
            top = model.recommend(prefix) if prefix else []
            found.append(top.index(target) + 1 if target in top else 1 << 30)
    return np.array(found, dtype=np.int64)


def _tuned_vsknn(train: list[data.Sequence], fraction: float) -> baselines.VSkNNConfig:
    """The V-SkNN weighting that scores best on the validation split of TRAIN."""
    fitting, validation = data.split_by_end(train, fraction)
    sessions = _sessions(fitting)
    known = {i for items, _ in sessions.values() for i in items}
    held = [
        s
        for s in (data.keep_known(v, known) for v in validation)
        if sum(i is not None for i in s.raw_items) >= 2
    ]
    best, best_score = baselines.VSkNNConfig(), -1.0
    for config in baselines.VSKNN_GRID:
        m = ranking(_baseline_ranks(baselines.VSkNN(sessions, config), held))
        if m[f"hr@{K}"] + m[f"mrr@{K}"] > best_score:
            best, best_score = config, m[f"hr@{K}"] + m[f"mrr@{K}"]
    return best


def _served(
    early: NextEventModel,
    vocab: ItemVocabulary,
    train: list[data.Sequence],
    test: list[data.Sequence],
    config: NextEventConfig,
    args: NextClickArgs,
) -> tuple[NextItemsChoice, np.ndarray[Any, Any]]:
    """The strategy chosen on TRAIN's validation split, and its ranks on TEST."""
    fitting, validation = data.split_by_end(train, args.train_config.validation_fraction)
    choice = choose_next_items(
        early,
        vocab,
        fitting,
        validation,
        sequence_length=config.sequence_length,
        max_sessions=args.knn_max_sessions,
    )
    held = positions(test, vocab, config.sequence_length)
    return choice, top_ranks(choice.top(early, held, K)[0], held.target)


def evaluate(args: NextClickArgs) -> NextClickResult:
    tokens = Vocabulary()
    train_events, test_events = _split(args)
    train_groups = data.by_key(train_events, sessions=True)
    known = {e.item_id for e in train_events if e.item_id is not None}
    test_groups = data.keep_items(data.by_key(test_events, sessions=True), known)
    train_seqs = data.sequences(train_groups, tokens)
    test_seqs = data.sequences(test_groups, tokens)
    vocab = data.item_vocabulary(train_groups, args.items, args.oov_buckets)
    config = model_config(vocab, tokens, args)

    # The early-stopped network (trained on TRAIN less its validation split) chooses the
    # served strategy; the refit on all of TRAIN is the `model` row, as before.
    early, report = fit(config, replace(args.train_config, refit=False), train_seqs, vocab)
    model = early
    if args.train_config.refit:
        epochs = report.best_epoch + 1
        model = _train(config, args.train_config, train_seqs, vocab, epochs, None, report)
    rows = {"model": ranks(model, test_seqs, vocab, config.sequence_length, unknown_as_miss=True)}
    choice, rows["served"] = _served(early, vocab, train_seqs, test_seqs, config, args)
    sessions = _sessions(train_seqs)
    started = time.perf_counter()
    tuned = _tuned_vsknn(train_seqs, args.train_config.validation_fraction)
    rows["popularity"] = _baseline_ranks(baselines.Popularity(sessions), test_seqs)
    rows["item_knn"] = _baseline_ranks(baselines.ItemKNN(sessions), test_seqs)
    rows["vsknn"] = _baseline_ranks(baselines.VSkNN(sessions, tuned), test_seqs)
    baseline_s = time.perf_counter() - started
    counts = {name: len(r) for name, r in rows.items()}
    if len(set(counts.values())) != 1:
        raise AssertionError(f"models scored on different positions: {counts}")
    models: dict[str, dict[str, Any]] = {name: ranking(r) for name, r in rows.items()}
    models["served"].update(strategy=choice.strategy, blend_weight=choice.blend_weight)
    return NextClickResult(
        positions=counts["model"],
        models=models,
        details={
            "train_sessions": len(train_seqs),
            "test_sessions": len(test_seqs),
            "items": len(vocab.items),
            "fit": report.to_dict(),
            "vsknn": tuned.__dict__,
            "next_items": choice.to_dict(),
            "baseline_seconds": round(baseline_s, 1),
        },
    )


# `clickscore train`: users' whole histories are far more positions per epoch than the session
# samples, so fewer epochs, and no refit (the early-stopped model is served).
SERVED_NEXT_TRAIN = NextTrainConfig(max_epochs=10, patience=2, refit=False)
# `clickscore train --tiny`: a smoke test in seconds, not a model to serve.
TINY_NEXT_MODEL = {"hidden": 32, "layers": 1}
TINY_NEXT_TRAIN = NextTrainConfig(max_epochs=3, patience=1, refit=False)


def train_for_serving(
    events: list[Event],
    *,
    sequence_length: int,
    tiny: bool = False,
    seed: int = 0,
    items: int = 50_000,
    oov_buckets: int = 64,
    train_config: NextTrainConfig | None = None,
) -> tuple[NextEventModel, ItemVocabulary, dict[str, Any]]:
    """The next-event network of a served version, trained on users' whole histories."""
    tokens = Vocabulary()
    groups = data.by_key(events, sessions=False)
    vocab = data.item_vocabulary(groups, items, oov_buckets)
    args = NextClickArgs(format="", train=Path(), items=items, oov_buckets=oov_buckets)
    config = replace(
        model_config(vocab, tokens, args),
        sequence_length=sequence_length,
        **(TINY_NEXT_MODEL if tiny else {}),
    )
    base = train_config or (TINY_NEXT_TRAIN if tiny else SERVED_NEXT_TRAIN)
    train_config = replace(base, seed=seed)
    model, report = fit(config, train_config, data.sequences(groups, tokens), vocab)
    return model, vocab, {**report.to_dict(), "train_config": train_config.to_dict()}
