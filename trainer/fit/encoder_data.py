"""The transformer encoder's data: a history's labelled sequences at cut-offs, split by user.

Users are split three ways by a stable hash: test (held out), validation (the churn alert
threshold for CLICKSCORE_CHURN_ALERT_PRECISION; its normal users: the anomaly calibration)
and train. Used by the evaluation report (trainer/evaluate/report.py) and the tests; the
served version's pipeline is trainer/pipeline.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event
from stream.contract.tokenizer import Vocabulary
from stream.settings import TrainerSettings
from trainer.fit.encoder import ModelConfig
from trainer.fit.encoder_training import (
    TINY_MODEL,
    TINY_TRAIN,
    TrainConfig,
    predict,
)
from trainer.labels import sequences as data
from trainer.labels.outcomes import OutcomeLabel, relabel
from trainer.thresholds import threshold_for_precision

log = logging.getLogger(__name__)
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True)
class TrainArgs:
    data: str = "synthetic"  # "synthetic", "topic", or a stream.datasets.loaders format
    path: Path | None = None
    users: int = 2000  # synthetic only
    days: int = 14
    seed: int = 0
    tiny: bool = False
    lora: bool = False
    promote: bool = True  # gate and load into Triton; False only writes the candidate


@dataclass
class Split:
    train: data.Examples
    test: data.Examples
    validation: data.Examples
    validation_tokens: npt.NDArray[Any]
    pretrain: npt.NDArray[Any]
    anomalous: set[str]
    # Served alerts' outcomes applied to the churn labels (trainer/labels/outcomes.py).
    outcome_labels: dict[str, int] = field(default_factory=dict)


def load_events(
    settings: TrainerSettings, args: TrainArgs
) -> tuple[list[Event], dict[str, tuple[str, int] | None], dict[str, Any]]:
    """Events (time-sorted), known anomalies per user, and a description for the export."""
    if args.data == "synthetic":
        from stream.datasets.synthetic import SyntheticConfig, generate

        config = SyntheticConfig(users=args.users, days=args.days, seed=args.seed)
        events, truth = generate(config)
        anomalies = {
            u: (t.anomaly, t.anomaly_start_ms) if t.anomaly and t.anomaly_start_ms else None
            for u, t in truth.items()
        }
        desc = {"source": "synthetic", "users": args.users, "days": args.days, "seed": args.seed}
        return events, anomalies, {**desc, "events": len(events)}
    from trainer.history import Source, load_history

    source = Source(args.data, args.path, args.users, args.days, args.seed)
    history = load_history(settings, source)
    return history.events, {}, history.description


def spec_of(settings: TrainerSettings, seed: int) -> data.ExampleSpec:
    return data.ExampleSpec(
        churn_horizon_ms=settings.churn_horizon_s * 1000,
        purchase_horizon_ms=settings.purchase_horizon_s * 1000,
        sequence_length=settings.sequence_length,
        seed=seed,
    )


def split(
    settings: TrainerSettings,
    events: list[Event],
    anomalies: dict[str, tuple[str, int] | None],
    seed: int,
    outcomes: Sequence[OutcomeLabel] = (),
) -> Split:
    vocab = Vocabulary()
    by_user = data.group_by_user(events)
    examples = data.build_examples(by_user, vocab, spec_of(settings, seed))
    feedback: dict[str, int] = {}
    if outcomes:
        done = relabel(
            examples.user_ids,
            examples.cutoff_ms,
            examples.churn,
            outcomes,
            settings.churn_horizon_s * 1000,
        )
        examples.churn = done.churn
        examples = examples.subset(done.keep)
        feedback = {
            "outcomes": len(outcomes),
            "matched": done.matched,
            "changed": done.changed,
            "dropped_treated": done.dropped,
        }
    test_users = {u for u in by_user if data.held_out(u, TEST_FRACTION, seed)}
    val_users = {
        u
        for u in by_user
        if u not in test_users and data.held_out(u, VALIDATION_FRACTION, seed + 1)
    }
    anomalous = {u for u, a in anomalies.items() if a}
    in_test = np.array([u in test_users for u in examples.user_ids])
    in_val = np.array([u in val_users for u in examples.user_ids])
    normal_val = in_val & np.array([u not in anomalous for u in examples.user_ids])
    train_users = {u: e for u, e in by_user.items() if u not in test_users and u not in val_users}
    return Split(
        train=examples.subset(~in_test & ~in_val),
        test=examples.subset(in_test),
        validation=examples.subset(in_val),
        validation_tokens=examples.tokens[normal_val if normal_val.any() else ~in_test],
        pretrain=data.unlabelled_sequences(train_users, vocab, settings.sequence_length, seed=seed),
        anomalous=anomalous,
        outcome_labels=feedback,
    )


def configs(settings: TrainerSettings, args: TrainArgs) -> tuple[ModelConfig, TrainConfig]:
    extra: dict[str, Any] = dict(TINY_MODEL) if args.tiny else {}
    model_config = ModelConfig(
        field_sizes=Vocabulary().field_sizes, sequence_length=settings.sequence_length, **extra
    )
    base = TINY_TRAIN if args.tiny else TrainConfig()
    train_config = TrainConfig(**{**base.__dict__, "seed": args.seed, "lora": args.lora})
    return model_config, train_config


def alert_thresholds(
    settings: TrainerSettings, model: Any, validation: data.Examples
) -> dict[str, dict[str, Any]]:
    """The churn alert threshold for the target precision, on the validation users."""
    target = settings.churn_alert_precision
    if not len(validation):
        return {"churn": {"threshold": None, "target_precision": target}}
    scores = predict(model, validation.tokens, top_items=False)["churn"]
    picked = threshold_for_precision(validation.churn, scores, target)
    if picked is None:
        log.warning("no churn threshold reaches precision %.2f on validation users", target)
        return {"churn": {"threshold": None, "target_precision": target}}
    log.info(
        "churn alerts at %.3f: precision %.2f, recall %.2f on validation (base rate %.2f)",
        picked.threshold,
        picked.precision,
        picked.recall,
        picked.base_rate,
    )
    return {"churn": picked.to_dict()}
