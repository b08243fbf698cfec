"""The demo's users replayed through the worker's own ScoringPipeline, scored by the served
version through the clickscore backend in process (a stand-in for Triton's python-backend
utilities, no services): churn alerts against the generator's churners, and anomaly, burst
and takeover alerts against its anomalies, counted as `clickscore demo` counts them."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from zlib import crc32

import numpy as np
import numpy.typing as npt
import pytest

from stream.contract.events import event_to_json
from stream.datasets.synthetic import SyntheticConfig, UserTruth, generate
from stream.demo.report import PrecisionRecall, precision_recall
from stream.scoring.alerts import ANOMALY, BURST, TAKEOVER, Alert
from stream.worker.pipeline import ScoringPipeline
from stream.worker.triton_client import ModelScores
from stream.worker.window import Message
from tests.conftest import make_settings
from tests.support.pipeline import MemoryTable, RecordingOutputs
from tests.unit.test_feature_head import _served_model

WINDOW, PARTITIONS = 1000, 4


class InProcessScorer:
    takes_features = True

    def __init__(self, model: Any, served_anomaly_threshold: bool = True) -> None:
        self.model = model
        # False: drop the version's ANOMALY_THRESHOLD, as a model without the output answers.
        self.served_anomaly_threshold = served_anomaly_threshold

    async def score(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64] | None = None,
        features: npt.NDArray[np.float32] | None = None,
    ) -> ModelScores:
        request = {"TOKENS": tokens.astype(np.int64), "ITEM_HASHES": item_hashes}
        if features is not None:
            request["FEATURES"] = features
        (response,) = self.model.execute([request])
        assert response.error is None
        out = response.outputs
        return ModelScores(
            out["CHURN"][:, 0],
            out["PURCHASE"][:, 0],
            out["ANOMALY"][:, 0],
            ["7"] * tokens.shape[0],
            churn_threshold=out["CHURN_THRESHOLD"][:, 0],
            anomaly_threshold=(
                out["ANOMALY_THRESHOLD"][:, 0] if self.served_anomaly_threshold else None
            ),
        )


_REPLAYS: dict[bool, tuple[list[Alert], dict[str, UserTruth]]] = {}


def replay_demo(
    monkeypatch: pytest.MonkeyPatch, served_anomaly_threshold: bool = True
) -> tuple[list[Alert], dict[str, UserTruth]]:
    """The demo's alerts and truth (one replay per variant per test session)."""
    if served_anomaly_threshold not in _REPLAYS:
        _REPLAYS[served_anomaly_threshold] = _replay(monkeypatch, served_anomaly_threshold)
    return _REPLAYS[served_anomaly_threshold]


def _replay(
    monkeypatch: pytest.MonkeyPatch, served_anomaly_threshold: bool
) -> tuple[list[Alert], dict[str, UserTruth]]:
    events, truth = generate(SyntheticConfig(users=300, days=7, seed=0))  # the demo's
    end_ms = events[-1].ts_ms
    sink = RecordingOutputs()
    pipeline = ScoringPipeline(
        make_settings(),
        MemoryTable(),
        InProcessScorer(_served_model(monkeypatch), served_anomaly_threshold),
        sink,
        sink,  # type: ignore[arg-type]
        clock=lambda: end_ms / 1000 + 1,
    )
    messages = [
        Message(
            e.user_id.encode(),
            event_to_json(e),
            "events",
            crc32(e.user_id.encode()) % PARTITIONS,
            i,
        )
        for i, e in enumerate(events)
    ]

    async def replay() -> None:
        for start in range(0, len(messages), WINDOW):
            await pipeline.process(messages[start : start + WINDOW])

    asyncio.run(replay())
    assert sink.dead == []
    return list(sink.alerts), truth


def test_the_demos_users_get_churn_alerts_at_twice_the_base_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    alerts, truth = replay_demo(monkeypatch)
    churners = {user for user, t in truth.items() if t.persona == "churner"}
    flagged = {a.user_id for a in alerts if a.kind == "churn"}
    base_rate = len(churners) / len(truth)
    precision = len(flagged & churners) / len(flagged)
    recall = len(flagged & churners) / len(churners)
    silent = sum("silence" in a.reason for a in alerts if a.kind == "churn")
    with capsys.disabled():
        print(
            "\n"
            + json.dumps(
                {
                    "precision": round(precision, 3),
                    "recall": round(recall, 3),
                    "base_rate": base_rate,
                    "flagged": len(flagged),
                    "churners": len(churners),
                    "churn_alerts_after_silence": silent,
                }
            )
        )
    assert precision >= 2 * base_rate and recall >= 0.5
    assert silent > 0  # silent re-scores with their features raise some of them


def anomaly_rows(alerts: list[Alert], truth: dict[str, UserTruth]) -> dict[str, PrecisionRecall]:
    """stream/demo/run.py's anomaly rows: users flagged by each kind against the anomalies."""
    by_kind: dict[str, set[str]] = {ANOMALY: set(), BURST: set(), TAKEOVER: set()}
    for alert in alerts:
        by_kind.setdefault(alert.kind, set()).add(alert.user_id)
    anomalous = {u for u, t in truth.items() if t.anomaly is not None}
    users = len(truth)
    rules = by_kind[BURST] | by_kind[TAKEOVER]
    rows = [
        precision_recall("anomaly", by_kind[ANOMALY], anomalous, users),
        precision_recall("burst+takeover", rules, anomalous, users),
        precision_recall("anomaly+burst+takeover", rules | by_kind[ANOMALY], anomalous, users),
    ]
    return {row.label: row for row in rows}


def _figures(rows: dict[str, PrecisionRecall]) -> dict[str, Any]:
    return {
        label: {
            "precision": None if r.precision is None else round(r.precision, 3),
            "recall": None if r.recall is None else round(r.recall, 3),
            "flagged": r.flagged,
            "true": r.actual,
        }
        for label, r in rows.items()
    }


def test_the_demos_anomalies_meet_the_target_with_the_served_anomaly_threshold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/evaluation.md, "The anomaly target": precision and recall of at least 0.9 over
    bots, scrapers and takeovers per user, the model and the rules together, on the demo's
    users through the worker's code; and the same replay with the worker's fixed 0.95 (a
    model without ANOMALY_THRESHOLD)."""
    served = anomaly_rows(*replay_demo(monkeypatch))
    fixed = anomaly_rows(*replay_demo(monkeypatch, served_anomaly_threshold=False))
    with capsys.disabled():
        print("\n" + json.dumps({"served": _figures(served), "fixed_0.95": _figures(fixed)}))
    combined = served["anomaly+burst+takeover"]
    assert combined.actual == 18
    assert combined.precision is not None and combined.precision >= 0.9
    assert combined.recall is not None and combined.recall >= 0.9
    # Version 7 does not serve anomaly (version 6's threshold reached 0.9 per user nowhere):
    # Triton answers NaN, which raises no alert at any threshold, so the rules flag the
    # anomalies alone, with the served threshold (infinity) or the worker's fixed one.
    assert served["anomaly"].flagged == 0 and fixed["anomaly"].flagged == 0
    assert fixed["anomaly+burst+takeover"] == combined
