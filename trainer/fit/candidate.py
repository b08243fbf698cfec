"""The pipeline's fit step: every part a version may serve, and the choice per task.

- The feature head (trainer/fit/feature_head.py) for churn and purchase, always: its
  regularisation is picked on an inner split of the train users, so the validation users stay
  unseen for the choices below.
- The next-event network (trainer/evaluate/next_click.py `train_for_serving`) on the train
  and validation users' histories (never the test users').
- The transformer encoder (trainer/fit/encoder_training.py) only when
  CLICKSCORE_TRAIN_ENCODER asks: it is slow, and on every data set measured so far the
  feature head beats it on churn (docs/evaluation.md).

Churn and purchase are each served by whichever part has the higher ROC-AUC on the
validation users' points. NaN features (a bug upstream, or a corrupted state) are refused
here rather than fitted: a logistic regression on NaN fails far from its cause.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.tokenizer import Vocabulary
from trainer.evaluate.heldout import point_auc
from trainer.fit.feature_head import FeatureHead, pick_head
from trainer.history import HistoryRefused
from trainer.labels.points import Points
from trainer.labels.sequences import held_out

log = logging.getLogger(__name__)
TASKS = ("churn", "purchase")


@dataclass
class Fitted:
    heads: dict[str, FeatureHead]
    served: dict[str, str | None]
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # ROC-AUC per part
    encoder: Any = None  # trainer.fit.encoder.ClickscoreModel when trained
    next_event: tuple[Any, Any, dict[str, Any]] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    next_items: Any = None  # trainer/fit/next_items.py NextItemsChoice


def finite_features(points: Points, vocab: Vocabulary, group: str) -> npt.NDArray[np.float64]:
    x = points.features(vocab).astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows, columns = np.nonzero(bad)
        from stream.contract.features import NAMES

        names = sorted({NAMES[c] for c in columns})
        raise HistoryRefused(
            f"{len(set(rows))} {group} rows have NaN or infinite features ({', '.join(names)}): "
            "refusing to fit on them"
        )
    return x


def fit_heads(train: Points, vocab: Vocabulary, seed: int) -> dict[str, FeatureHead]:
    x = finite_features(train, vocab, "train")
    inner = np.array([held_out(u, 0.2, seed + 2) for u in train.users])
    heads = {}
    for task in TASKS:
        y = train.labels(task)
        if len(set(y[inner])) < 2 or len(set(y[~inner])) < 2:
            inner = np.arange(len(y)) % 5 == 0  # too few users for a user split: rows
        heads[task] = pick_head(x[~inner], y[~inner], x[inner], y[inner]).head
    return heads


def choose(
    heads: dict[str, FeatureHead],
    validation: Points,
    vocab: Vocabulary,
    encoder: Any,
    sequence_length: int,
) -> tuple[dict[str, str | None], dict[str, dict[str, float]]]:
    """Per task, the part with the higher validation ROC-AUC (the feature head on a tie)."""
    x = finite_features(validation, vocab, "validation")
    encoded: dict[str, Any] = {}
    if encoder is not None:
        from trainer.fit.encoder_training import predict

        tokens, _, _ = validation.inputs(vocab, sequence_length)
        encoded = predict(encoder, tokens, top_items=False)
    served: dict[str, str | None] = {}
    figures: dict[str, dict[str, float]] = {}
    for task in TASKS:
        y = validation.labels(task)
        figures[task] = {"feature_head": point_auc(y, heads[task].scores(x))}
        if task in encoded:
            figures[task]["encoder"] = point_auc(y, np.asarray(encoded[task], dtype=np.float64))
        served[task] = max(
            figures[task], key=lambda part: (figures[task][part], part == "feature_head")
        )
    return served, figures


def fit_encoder(
    points: dict[str, Points], events: list[Event], settings: Any, seed: int, tiny: bool
) -> Any:
    """The transformer encoder on the train users' sequences (trainer/labels/sequences.py)."""
    from trainer.fit.encoder import ModelConfig
    from trainer.fit.encoder_training import TINY_MODEL, TINY_TRAIN, TrainConfig, fit
    from trainer.labels import sequences as data

    del points  # the encoder learns from its own cut-offs of the same users
    vocab = Vocabulary()
    by_user = data.group_by_user(events)
    spec = data.ExampleSpec(
        churn_horizon_ms=settings.churn_horizon_s * 1000,
        purchase_horizon_ms=settings.purchase_horizon_s * 1000,
        sequence_length=settings.sequence_length,
        seed=seed,
    )
    examples = data.build_examples(by_user, vocab, spec)
    from trainer.labels.points import group_of

    train = examples.subset(np.array([group_of(u, seed) == "train" for u in examples.user_ids]))
    train_users = {u: e for u, e in by_user.items() if group_of(u, seed) == "train"}
    model_config = ModelConfig(
        field_sizes=vocab.field_sizes,
        sequence_length=settings.sequence_length,
        **(TINY_MODEL if tiny else {}),
    )
    base = TINY_TRAIN if tiny else TrainConfig()
    config = replace(base, seed=seed, threads=settings.train_threads)
    pretrain = data.unlabelled_sequences(train_users, vocab, settings.sequence_length, seed=seed)
    return fit(model_config, config, pretrain, train, train.tokens)
