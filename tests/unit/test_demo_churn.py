"""The demo's users replayed through the worker's own ScoringPipeline, scored by the served
version's model.py in process (a stand-in for Triton's python-backend utilities, no services):
churn alerts against the generator's churners, counted as `clickscore demo` counts them."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from zlib import crc32

import numpy as np
import numpy.typing as npt
import pytest

from stream.contract.events import event_to_json
from stream.datasets.synthetic import SyntheticConfig, generate
from stream.worker.pipeline import ScoringPipeline
from stream.worker.triton_client import ModelScores
from stream.worker.window import Message
from tests.conftest import make_settings
from tests.support.pipeline import MemoryTable, RecordingOutputs
from tests.unit.test_feature_head import _served_model

WINDOW, PARTITIONS = 1000, 4


class InProcessScorer:
    takes_features = True

    def __init__(self, model: Any) -> None:
        self.model = model

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
            ["6"] * tokens.shape[0],
            churn_threshold=out["CHURN_THRESHOLD"][:, 0],
        )


def test_the_demos_users_get_churn_alerts_at_twice_the_base_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events, truth = generate(SyntheticConfig(users=300, days=7, seed=0))  # the demo's
    end_ms = events[-1].ts_ms
    sink = RecordingOutputs()
    pipeline = ScoringPipeline(
        make_settings(),
        MemoryTable(),
        InProcessScorer(_served_model(monkeypatch)),
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
    churners = {user for user, t in truth.items() if t.persona == "churner"}
    flagged = {a.user_id for a in sink.alerts if a.kind == "churn"}
    base_rate = len(churners) / len(truth)
    precision = len(flagged & churners) / len(flagged)
    recall = len(flagged & churners) / len(churners)
    silent = sum("silence" in a.reason for a in sink.alerts if a.kind == "churn")
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
