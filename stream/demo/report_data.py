"""What the demo's report shows, gathered from this run's database and the model repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from stream.db.models import Alert, RetentionAction, UserScore
from stream.demo.report import FlaggedUser, ModelEvaluation
from stream.settings import Settings
from stream.sinks.postgres import create_engine


@dataclass(frozen=True)
class RunResults:
    scores: dict[str, list[float]]  # churn_risk / purchase_intent / anomaly, one per user
    alerts: list[tuple[str, str, datetime]]  # (user, kind, event time)
    retention_actions: int
    flagged: list[FlaggedUser]  # every alert with why, in event time order


async def read_results(settings: Settings) -> RunResults:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            score_rows = (
                await conn.execute(
                    select(UserScore.churn_risk, UserScore.purchase_intent, UserScore.anomaly)
                )
            ).all()
            alert_rows = (
                await conn.execute(
                    select(
                        Alert.user_id,
                        Alert.kind,
                        Alert.event_at,
                        Alert.score,
                        Alert.threshold,
                        Alert.reason,
                        Alert.event_ids,
                    ).order_by(Alert.event_at, Alert.user_id)
                )
            ).all()
            actions = len((await conn.execute(select(RetentionAction.alert_id))).all())
    finally:
        await engine.dispose()
    scores = {
        "churn_risk": [r[0] for r in score_rows],
        "purchase_intent": [r[1] for r in score_rows],
        "anomaly": [r[2] for r in score_rows if r[2] is not None],  # None: not served
    }
    flagged = [
        FlaggedUser(r[0], r[1], float(r[3]), float(r[4]), r[5], list(r[6] or ()))
        for r in alert_rows
    ]
    return RunResults(scores, [(r[0], r[1], r[2]) for r in alert_rows], actions, flagged)


def served_model_evaluation(model_repo: Path, model: str) -> ModelEvaluation:
    """The evaluation the trainer stored with the version Triton serves (the highest one,
    Triton's default version policy)."""
    folder = model_repo / model
    versions = sorted(
        (int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
        if folder.is_dir()
        else ()
    )
    if not versions:
        return ModelEvaluation(model, None, None)
    version = str(versions[-1])
    meta = folder / version / "model_config.json"
    try:
        metrics = json.loads(meta.read_text()).get("metrics") if meta.is_file() else None
    except (OSError, ValueError):
        metrics = None
    return ModelEvaluation(model, version, metrics if isinstance(metrics, dict) else None)
