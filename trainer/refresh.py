"""One training run end to end: events -> examples -> fit -> candidate folder -> gate -> serve.

Users are split three ways by a stable hash: test (held out: every reported metric and the
promotion gate), validation (the churn alert threshold for CLICKSCORE_CHURN_ALERT_PRECISION;
its normal users: the anomaly calibration) and train.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.contract.events import Event, ValidationLimits, parse_event
from stream.contract.tokenizer import Vocabulary
from stream.kafka_security import aiokafka_options
from stream.settings import TrainerSettings
from trainer import export, promote
from trainer.evaluate.next_click import train_for_serving
from trainer.fit.encoder import ModelConfig
from trainer.fit.encoder_training import (
    TINY_MODEL,
    TINY_TRAIN,
    StepCallback,
    TrainConfig,
    fit,
    predict,
)
from trainer.labels import sequences as data
from trainer.labels.outcomes import OutcomeLabel, read_outcome_labels, relabel
from trainer.reference import validation_reference, write_reference
from trainer.thresholds import threshold_for_precision

log = logging.getLogger(__name__)
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
_ANY_TIME = ValidationLimits(max_age_s=1 << 40, max_future_s=1 << 40)


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


def read_topic(settings: TrainerSettings, limit: int) -> list[Event]:
    """The newest `limit` valid events of the events topic (read to its current end)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def consume() -> list[Event]:
        consumer = AIOKafkaConsumer(
            settings.topic_events,
            bootstrap_servers=settings.broker_servers,
            **aiokafka_options(settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        kept: deque[Event] = deque(maxlen=limit)
        try:
            while batch := await consumer.getmany(timeout_ms=2000, max_records=10_000):
                for records in batch.values():
                    for record in records:
                        parsed = parse_event(record.value or b"", 0, _ANY_TIME)
                        if isinstance(parsed, Event):
                            kept.append(parsed)
        finally:
            await consumer.stop()
        return list(kept)

    return asyncio.run(consume())


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
    if args.data == "topic":
        events = read_topic(settings, settings.train_history_events)
        desc = {"source": f"topic {settings.topic_events}"}
    else:
        from stream.datasets.loaders import load, sort_by_time

        if args.path is None:
            raise ValueError(f"--data {args.data} needs a PATH")
        events = list(load(args.data, args.path))[-settings.train_history_events :]
        events = sort_by_time(events)
        desc = {"source": f"{args.data} {args.path.name}"}
    return events, {}, {**desc, "events": len(events)}


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


def train_candidate(
    settings: TrainerSettings, args: TrainArgs, on_step: StepCallback | None = None
) -> tuple[Path, data.Examples]:
    events, anomalies, description = load_events(settings, args)
    # Live history: the served alerts' recorded outcomes relabel their examples.
    outcomes = read_outcome_labels(settings) if args.data == "topic" else []
    parts = split(settings, events, anomalies, args.seed, outcomes)
    log.info("%d train / %d test examples", len(parts.train), len(parts.test))
    model_config, train_config = configs(settings, args)
    model = fit(
        model_config, train_config, parts.pretrain, parts.train, parts.validation_tokens, on_step
    )
    folder = promote.store_dir(settings) / str(
        export.next_version(promote.served_dir(settings), promote.store_dir(settings))
    )
    metrics = promote.metrics_of(model, parts.test)
    # The next-event network learns from every user outside the test users' histories.
    next_event = train_for_serving(
        [e for e in events if not data.held_out(e.user_id, TEST_FRACTION, args.seed)],
        sequence_length=settings.sequence_length,
        tiny=args.tiny,
        seed=args.seed,
    )
    description = {
        **description,
        "train_examples": len(parts.train),
        "test_examples": len(parts.test),
        "train_config": train_config.__dict__,
        "churn_horizon_s": settings.churn_horizon_s,
        "purchase_horizon_s": settings.purchase_horizon_s,
        "outcome_labels": parts.outcome_labels,
    }
    thresholds = alert_thresholds(settings, model, parts.validation)
    export.export(
        model,
        Vocabulary(),
        folder,
        metrics=metrics,
        training_data=description,
        alert_thresholds=thresholds,
        next_event=next_event,
    )
    write_reference(folder, validation_reference(folder, model, parts.validation))
    return folder, parts.test


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


def store_thresholds(settings: TrainerSettings, folder: Path) -> dict[str, dict[str, Any]]:
    """Pick the churn alert threshold of an already exported version on its own validation
    users and write it into its model_config.json (for versions exported before thresholds
    were). Synthetic training data only: it is regenerated from the recorded config."""
    meta = export.read_meta(folder)
    recorded = meta.get("training_data", {})
    if recorded.get("source") != "synthetic":
        raise ValueError(
            f"v{folder.name} was trained on {recorded.get('source')!r}: retrain it instead"
        )
    args = TrainArgs(users=recorded["users"], days=recorded["days"], seed=recorded["seed"])
    events, anomalies, _ = load_events(settings, args)
    parts = split(settings, events, anomalies, args.seed)
    thresholds = alert_thresholds(settings, export.load(folder), parts.validation)
    meta["alert_thresholds"] = thresholds
    staging = folder / f".{export.META}.tmp"
    staging.write_text(json.dumps(meta, indent=2, sort_keys=True))
    staging.replace(folder / export.META)
    return thresholds
