"""One training run: history -> labels -> fit -> thresholds -> export -> evaluate -> gate ->
publish. Each step is a function of its own module:

    history     trainer/history.py            events from synthetic | topic | FORMAT PATH
    labels      trainer/labels/points.py      users split by hash; scoring points, labels
    fit         trainer/fit/candidate.py      feature head, next-event network, (encoder)
    thresholds  trainer/alert_thresholds.py   churn alerts per user on validation users
    export      trainer/export/version_folder.py  a format-2 folder, under a staging name
    evaluate    trainer/evaluate/versions.py  candidate and serving version on test users
    gate        trainer/gate.py               a verdict per served task
    publish     trainer/publish.py            into the repository, Triton load, model_versions

The candidate is exported before it is evaluated so that both versions are scored by the
same serving code (stream/serving/version.py); it is written under a staging name in the
store, and becomes version N (with its gate table in model_config.json) by a rename only once
gated. A run killed at any point leaves the repository as it was and at most a `.N...tmp`
folder in the store, which the next run removes (publish.clean_stale).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract.features import FeatureSchema
from stream.contract.tokenizer import Vocabulary
from stream.settings import TrainerSettings
from trainer import publish
from trainer.alert_thresholds import churn_threshold, no_anomaly_alert
from trainer.export import next_version, read_meta
from trainer.gate import GateDecision, decide
from trainer.history import History, HistoryRefused, Source, load_history
from trainer.labels.points import Points, labelled_points, refuse_one_class, split_users
from trainer.labels.scoring_points import RowSpec
from trainer.labels.sequences import group_by_user

log = logging.getLogger(__name__)
MOST_REFERENCE_ROWS = 20_000  # enough for 30 bins; bounds the scoring time


@dataclass(frozen=True)
class TrainArgs:
    source: Source = field(default_factory=Source)
    tiny: bool = False
    promote: bool = True  # gate, then publish; False: gate and report only


@dataclass
class RunResult:
    version: int
    promoted: bool
    reason: str
    tasks: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "promoted": self.promoted,
            "reason": self.reason,
            "tasks": self.tasks,
        }


@dataclass
class Labelled:
    rows: dict[str, Points]  # per group: labelled scoring points
    every: dict[str, Points]  # validation and test: every scoring point (per-user alerts)
    by_group: dict[str, dict[str, list[Any]]]


def labels(settings: TrainerSettings, history: History, seed: int) -> Labelled:
    vocab = Vocabulary()
    groups = split_users(group_by_user(history.events), seed)
    spec = RowSpec(
        churn_horizon_ms=settings.churn_horizon_s * 1000,
        purchase_horizon_ms=settings.purchase_horizon_s * 1000,
        sequence_length=settings.sequence_length,
        seed=seed,
    )
    rows = {g: labelled_points(users, vocab, spec, history.end_ms) for g, users in groups.items()}
    if history.description.get("source", "").startswith("topic"):
        history.description["outcome_labels"] = apply_outcomes(settings, rows)
    refuse_one_class(rows)
    if not len(rows["test"]):
        raise HistoryRefused("no test user has a labelled scoring point: nothing to gate on")
    every = {
        g: labelled_points(groups[g], vocab, spec, history.end_ms, every_point=True)
        for g in ("validation", "test")
    }
    log.info("labelled points: %s", {g: len(r) for g, r in rows.items()})
    return Labelled(rows, every, groups)


def apply_outcomes(settings: TrainerSettings, rows: dict[str, Points]) -> dict[str, int]:
    """Live history: the served churn alerts' recorded outcomes relabel the train and
    validation points they were raised on, and treated alerts' points are dropped
    (trainer/labels/outcomes.py); the test users keep the history's labels, the same truth
    for the candidate and the serving version."""
    from trainer.labels.outcomes import read_outcome_labels, relabel

    outcomes = read_outcome_labels(settings)
    counts = {"outcomes": len(outcomes), "matched": 0, "changed": 0, "dropped_treated": 0}
    if not outcomes:
        return counts
    for group in ("train", "validation"):
        points = rows[group]
        done = relabel(
            points.users,
            points.at_ms,
            points.labels("churn").astype(np.float32),
            outcomes,
            settings.churn_horizon_s * 1000,
        )
        points.churn = [float(v) for v in done.churn]
        rows[group] = points.subset(done.keep)
        counts["matched"] += done.matched
        counts["changed"] += done.changed
        counts["dropped_treated"] += done.dropped
    return counts


def fit(settings: TrainerSettings, history: History, labelled: Labelled, args: TrainArgs) -> Any:
    from trainer.evaluate.next_click import train_for_serving
    from trainer.fit.candidate import Fitted, choose, fit_encoder, fit_heads

    vocab, seed, timings = Vocabulary(), args.source.seed, {}
    started = time.perf_counter()
    heads = fit_heads(labelled.rows["train"], vocab, seed)
    timings["feature_head_s"] = time.perf_counter() - started
    encoder = None
    if settings.train_encoder:
        started = time.perf_counter()
        encoder = fit_encoder(labelled.rows, history.events, settings, seed, args.tiny)
        timings["encoder_s"] = time.perf_counter() - started
    served, figures = choose(
        heads, labelled.rows["validation"], vocab, encoder, settings.sequence_length
    )
    started = time.perf_counter()
    test_users = labelled.by_group["test"]
    history_of = [e for e in history.events if e.user_id not in test_users]
    next_event = train_for_serving(
        history_of, sequence_length=settings.sequence_length, tiny=args.tiny, seed=seed
    )
    timings["next_event_s"] = time.perf_counter() - started
    started = time.perf_counter()
    choice = choose_next(settings, history_of, next_event, args.tiny)
    timings["next_items_choice_s"] = time.perf_counter() - started
    served = {**served, "anomaly": None, "next_items": choice.strategy}
    fitted = Fitted(heads, served, figures, encoder, next_event, timings)
    fitted.next_items = choice
    return fitted


def choose_next(settings: TrainerSettings, events: list[Any], next_event: Any, tiny: bool) -> Any:
    """Network, session kNN or a blend (trainer/fit/next_items.py), on the latest sessions of
    the same users, split off exactly as the network's early stopping split them (the served
    network never trained on them)."""
    from stream.contract.tokenizer import Vocabulary as Tokens
    from trainer.evaluate.next_click import SERVED_NEXT_TRAIN, TINY_NEXT_TRAIN
    from trainer.fit.next_items import choose_next_items
    from trainer.labels import sessions

    network, vocab, _ = next_event
    seqs = sessions.sequences(sessions.by_key(events, sessions=False), Tokens())
    fraction = (TINY_NEXT_TRAIN if tiny else SERVED_NEXT_TRAIN).validation_fraction
    fitting, validation = sessions.split_by_end(seqs, fraction)
    return choose_next_items(
        network,
        vocab,
        fitting,
        validation,
        sequence_length=settings.sequence_length,
        max_sessions=settings.session_knn_max_sessions,
    )


def churn_scores(fitted: Any, points: Points, settings: TrainerSettings) -> np.ndarray[Any, Any]:
    """The candidate's churn scores at these points, as its served part computes them."""
    vocab = Vocabulary()
    if fitted.served["churn"] == "encoder":
        from trainer.fit.encoder_training import predict

        tokens, _, _ = points.inputs(vocab, settings.sequence_length)
        return np.asarray(predict(fitted.encoder, tokens, top_items=False)["churn"], float)
    return np.asarray(fitted.heads["churn"].scores(points.features(vocab)), dtype=np.float64)


def thresholds(
    settings: TrainerSettings, fitted: Any, labelled: Labelled, history: History
) -> dict[str, dict[str, Any]]:
    points = labelled.every["validation"]
    churn = churn_threshold(
        settings, points, churn_scores(fitted, points, settings), history.churners, history.end_ms
    )
    why = (
        "the encoder is not trained (CLICKSCORE_TRAIN_ENCODER): no anomaly score"
        if fitted.encoder is None
        else "no labelled anomalies in this history to choose a threshold on"
        if not history.anomalies
        else "the anomaly threshold is not chosen by the pipeline yet: the rules alone alert"
    )
    return {"churn": churn, "anomaly": no_anomaly_alert(why)}


def training_record(
    settings: TrainerSettings, history: History, args: TrainArgs, fitted: Any
) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    keys = (
        "churn_horizon_s",
        "purchase_horizon_s",
        "sequence_length",
        "churn_alert_precision",
        "churn_alert_max_rate",
        "anomaly_alert_precision",
        "train_history_events",
        "train_min_users",
        "train_encoder",
        "train_threads",
        "promotion_margin",
        "gate_bootstrap_rounds",
    )
    return {
        "data": history.description,
        "source": {**asdict(args.source), "path": str(args.source.path or "")},
        "tiny": args.tiny,
        "settings": {k: getattr(settings, k) for k in keys},
        "seeds": {"split": args.source.seed, "fit": args.source.seed, "bootstrap": 0},
        "commit": commit,
        "validation_roc_auc": fitted.validation,
        "timings": fitted.seconds,
    }


def export_candidate(
    settings: TrainerSettings, fitted: Any, alert: dict[str, Any], record: dict[str, Any]
) -> tuple[int, Path]:
    """The candidate as a format-2 folder under a staging name in the store (not yet a
    version: `finish` names it once gated); returns its version number and folder."""
    from trainer.export.version_folder import ServedParts, export_version

    store = publish.store_dir(settings)
    version = next_version(publish.served_dir(settings), store)
    vocab = Vocabulary()
    choice = fitted.next_items
    record = {**record, "next_items": choice.to_dict()}
    parts = ServedParts(
        served=fitted.served,
        vocabulary=vocab,
        encoder=fitted.encoder if "encoder" in fitted.served.values() else None,
        feature_head={
            "schema": FeatureSchema(vocab).to_dict(),
            **{task: head.to_dict() for task, head in fitted.heads.items()},
        },
        next_event=fitted.next_event if choice.uses_network else None,
        session_knn=choice.index if choice.uses_knn else None,
        blend_weight=choice.blend_weight,
        session_knn_config=choice.index.config.to_dict() if choice.uses_knn else None,
        alert_thresholds=alert,
        record={"training": record},
        sequence_length=settings.sequence_length,
    )
    scratch = store / f".{version}.eval.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    return version, export_version(parts, scratch / str(version))


def drift_reference(folder: Path, points: Points) -> dict[str, Any]:
    """reference.json: the candidate's scores and features on the validation users' scoring
    points (every one, as the worker scores them), through the serving code; what the
    worker's drift gauges compare served traffic with (stream/contract/drift.py)."""
    import random

    from stream.contract.drift import ChurnPromise, Histogram, Reference
    from stream.contract.features import NAMES
    from stream.serving.version import ServedVersion

    if len(points) > MOST_REFERENCE_ROWS:
        keep = set(random.Random(0).sample(range(len(points)), MOST_REFERENCE_ROWS))
        points = points.subset([i in keep for i in range(len(points))])
    served = ServedVersion.load(folder)
    tokens, hashes, features = points.inputs(Vocabulary(), served.sequence_length)
    scores = served.score(tokens, hashes, features, 0)
    churn = served.manifest["alert_thresholds"].get("churn", {})
    promise = (
        ChurnPromise(float(churn["validation_precision"]), int(churn["validation_alerts"]))
        if churn.get("threshold") is not None
        else None
    )
    reference = Reference(
        version=folder.name,
        scores={
            "churn_risk": Histogram.of(scores["CHURN"][:, 0]),
            "purchase_intent": Histogram.of(scores["PURCHASE"][:, 0]),
            "anomaly": Histogram.of(scores["ANOMALY"][:, 0]),
        },
        features={name: Histogram.of(features[:, i]) for i, name in enumerate(NAMES)},
        churn=promise,
        source={
            "data": "the version's validation users, every scoring point",
            "rows": len(points),
            "written_by": "trainer/pipeline.py",
        },
    )
    return reference.to_dict()


def finish(
    folder: Path,
    version: int,
    decision: GateDecision,
    metrics: dict[str, Any],
    reference: dict[str, Any],
) -> Path:
    """Name the gated candidate version N in the store, its gate table in model_config.json:
    written in a staging folder, then renamed (no version folder is ever written into)."""
    store = folder.parent.parent
    staging = store / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    folder.rename(staging)
    meta = read_meta(staging)
    meta["gate"] = {"promoted": decision.promote, "reason": decision.reason, **decision.table()}
    meta["metrics"] = metrics
    (staging / "model_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    (staging / "reference.json").write_text(json.dumps(reference, indent=2))
    target = store / str(version)
    staging.rename(target)
    shutil.rmtree(folder.parent, ignore_errors=True)
    return target


def evaluate(
    settings: TrainerSettings,
    candidate: Path,
    labelled: Labelled,
    history: History,
    seed: int,
) -> tuple[dict[str, Any], str | None]:
    """The gate's measures per task; and why the serving version could not be measured."""
    from trainer.evaluate.versions import (
        HeldOut,
        popular_items,
        rfm_baselines,
        score_version,
    )
    from trainer.evaluate.versions import evaluate as measure

    vocab = Vocabulary()
    data = HeldOut(
        labelled.rows["test"],
        labelled.every["test"],
        history.churners,
        history.end_ms,
        settings.churn_horizon_s * 1000,
    )
    ours = score_version(candidate, data, vocab)
    found = publish.version_dir(settings, None)
    theirs, unmeasured = None, None
    if found is not None:
        try:
            theirs = score_version(found[1], data, vocab)
        except (ValueError, OSError, KeyError) as exc:
            unmeasured = f"serving v{found[0]} cannot be measured: {exc}"
    train = labelled.rows["train"]
    baselines = rfm_baselines(train, data.rows, vocab, seed)
    popular = popular_items(train.next_item)
    tasks = measure(data, ours, theirs, baselines, popular, settings.gate_bootstrap_rounds, 0)
    return tasks, unmeasured


def configure_threads(settings: TrainerSettings) -> None:
    """torch's pools at settings.train_threads (the CLI sets the BLAS/OpenMP environment
    before torch is imported); inter-op threads can be set once per process only."""
    import torch

    torch.set_num_threads(settings.train_threads)
    # Raises once set (a second run in the same process): the first setting stands.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(settings.train_threads)


def run(settings: TrainerSettings, args: TrainArgs) -> RunResult:
    """One run; a refused history raises HistoryRefused before anything is written."""
    # threadpoolctl (scikit-learn's own dependency) caps the BLAS and OpenMP pools already
    # started in this process too (gradient boosting's OpenMP threads spin while idle).
    from threadpoolctl import threadpool_limits

    configure_threads(settings)
    with threadpool_limits(limits=settings.train_threads):
        return _run(settings, args)


def _run(settings: TrainerSettings, args: TrainArgs) -> RunResult:
    publish.clean_stale(settings)
    started = time.perf_counter()

    def step(name: str) -> None:
        log.info("%s (%.0f s in)", name, time.perf_counter() - started)

    step("history")
    history = load_history(settings, args.source)
    step(f"labels: {len(history.events)} events")
    labelled = labels(settings, history, args.source.seed)
    step("fit")
    fitted = fit(settings, history, labelled, args)
    step(f"thresholds: served {fitted.served}")
    alert = thresholds(settings, fitted, labelled, history)
    record = training_record(settings, history, args, fitted)
    step("export")
    version, scratch = export_candidate(settings, fitted, alert, record)
    step(f"evaluate v{version} against the serving version")
    tasks, unmeasured = evaluate(settings, scratch, labelled, history, args.source.seed)
    decision = decide(
        tasks,
        settings.promotion_margin,
        promises={"churn_alert": settings.churn_alert_precision},
    )
    if unmeasured is not None:
        decision = GateDecision(False, f"refused: {unmeasured}", decision.tasks)
    metrics = {
        "gate": decision.table(),
        "validation_roc_auc": fitted.validation,
        "seconds": time.perf_counter() - started,
    }
    reference = drift_reference(scratch, labelled.every["validation"])
    folder = finish(scratch, version, decision, metrics, reference)
    log.info("v%d: %s", version, decision.reason)
    promoted = False
    if args.promote:
        import asyncio

        asyncio.run(publish.publish(settings, folder, decision.promote, metrics))
        promoted = decision.promote
    reason = decision.reason if args.promote else f"not promoted (--no-promote): {decision.reason}"
    return RunResult(version, promoted, reason, decision.table(), folder)
