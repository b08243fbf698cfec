"""The anomaly alert threshold by precision: picked per user, returned by the served model,
read by the worker where its config declares it, and applied by `evaluate`."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event
from stream.contract.tokenizer import Vocabulary
from stream.scoring.alerts import ANOMALY, AlertRules, evaluate
from stream.worker.triton_client import ANOMALY_THRESHOLD, ModelScores, TritonScorer
from tests.conftest import make_settings
from tests.unit.test_feature_requests import config
from trainer.thresholds import best_precision, threshold_for_precision

RULES = AlertRules(anomaly_threshold=0.95, anomaly_cooldown_s=600)
ROWS, LENGTH = 3, 64


def test_the_threshold_is_the_lowest_user_maximum_that_reaches_the_precision() -> None:
    # Each user's highest anomaly score; 1: an anomalous user. Top 10: 9 anomalous (0.9);
    # the 11th (0.97, a person) would drop precision to 9/11.
    anomalous = [1.0, 1.0, 1.0, 0.999, 0.998, 0.997, 0.996, 0.995, 0.994]
    scores = [*anomalous, 0.993, 0.97, 0.96, 0.5, 0.4]
    labels = [1] * 9 + [0, 0, 1, 0, 0]
    picked = threshold_for_precision(labels, scores, 0.9)
    assert picked is not None
    assert picked.threshold == 0.993 and picked.alerts == 10
    assert picked.precision == 0.9 and picked.recall == 0.9
    assert picked.base_rate == 10 / 14


def test_saturated_scores_reach_no_threshold_and_the_best_is_reported() -> None:
    # As version 6's network does per user: many people reach the top score 1.0 too.
    scores = [1.0] * 12 + [0.9] * 3 + [0.1] * 5
    labels = [1] * 4 + [0] * 8 + [1, 0, 0] + [0] * 5
    assert threshold_for_precision(labels, scores, 0.9) is None
    best = best_precision(labels, scores)
    assert best is not None
    assert best["threshold"] == 1.0 and best["precision"] == pytest.approx(4 / 12)
    assert best["recall"] == pytest.approx(4 / 5)


def test_a_versions_anomaly_threshold_as_triton_returns_it() -> None:
    from stream.serving.version import alert_threshold

    assert math.isnan(alert_threshold({}, "anomaly"))  # none: the worker's setting applies
    assert math.isnan(alert_threshold({"alert_thresholds": {"churn": {}}}, "anomaly"))
    none_reached = {"alert_thresholds": {"anomaly": {"threshold": None}}}
    assert alert_threshold(none_reached, "anomaly") == math.inf
    assert (
        alert_threshold({"alert_thresholds": {"anomaly": {"threshold": 0.99}}}, "anomaly") == 0.99
    )


def _state(events: int = 3) -> UserState:
    state: UserState | None = None
    for i in range(events):
        event = Event(f"e{i}", "u", 1_700_000_000_000 + i * 60_000, "view", item_id=f"i{i}")
        state, _ = apply_event(state, event, Vocabulary(), LENGTH)
    assert state is not None
    return state


def _anomaly_alerts(score: float, served: float) -> list[Any]:
    nan = math.nan
    _, alerts = evaluate(_state(), "u", nan, nan, score, "6", RULES, anomaly_threshold=served)
    return [a for a in alerts if a.kind == ANOMALY]


def test_evaluate_uses_the_served_anomaly_threshold() -> None:
    (alert,) = _anomaly_alerts(0.97, 0.96)
    assert alert.threshold == 0.96 and "crossed 0.96" in alert.reason
    assert _anomaly_alerts(0.97, 0.99) == []  # under the version's own, over the setting's
    # NaN: a version that carries none; the setting's 0.95 applies.
    (fallback,) = _anomaly_alerts(0.97, math.nan)
    assert fallback.threshold == 0.95
    assert _anomaly_alerts(0.94, math.nan) == []


def test_an_infinite_threshold_raises_no_model_anomaly_alert_but_the_rules_still_apply() -> None:
    assert _anomaly_alerts(1.0, math.inf) == []
    assert _anomaly_alerts(math.inf, math.inf) == []
    assert RULES.anomaly_level(math.inf) == math.inf
    # A script's pace still gets its burst alert from the same call.
    script: UserState | None = None
    for i in range(40):
        event = Event(f"b{i}", "bot", 1_700_000_000_000 + i * 200, "view", item_id=f"i{i}")
        script, _ = apply_event(script, event, Vocabulary(), LENGTH)
    assert script is not None
    nan = math.nan
    _, alerts = evaluate(script, "bot", nan, nan, 1.0, "6", RULES, anomaly_threshold=math.inf)
    assert [a.kind for a in alerts] == ["burst"]


class _Result:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self._outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self._outputs.get(name)

    def get_response(self) -> Any:
        return type("Response", (), {"model_version": "6"})()


class _Client:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs
        self.asked: list[str] = []

    async def infer(self, model: str, inputs: Any, outputs: Any, client_timeout: float) -> Any:
        self.asked = [o.name() for o in outputs]
        return _Result(self.outputs)


def _answer(edit: str, answered: dict[str, np.ndarray]) -> tuple[ModelScores, list[str]]:
    parsed = config()
    if edit == "no anomaly threshold":
        kept = [o for o in parsed.output if o.name != ANOMALY_THRESHOLD]
        del parsed.output[:]
        parsed.output.extend(kept)
    scorer = TritonScorer(make_settings())
    scorer.configure(parsed)
    client = _Client(answered)
    scorer._client = client  # type: ignore[assignment]
    tokens = np.ones((ROWS, LENGTH, 6), dtype=np.int32)
    return asyncio.run(scorer.score(tokens)), client.asked


def _outputs(**extra: float) -> dict[str, np.ndarray]:
    column = {n: np.full((ROWS, 1), 0.5, np.float32) for n in ("CHURN", "PURCHASE", "ANOMALY")}
    column["CHURN_THRESHOLD"] = np.full((ROWS, 1), 0.27, np.float32)
    for name, value in extra.items():
        column[name] = np.full((ROWS, 1), value, np.float32)
    column["NEXT_ITEMS"] = np.full((ROWS, 10), b"", dtype=object)
    column["NEXT_ITEM_PROBS"] = np.zeros((ROWS, 10), np.float32)
    column["NEXT_PURCHASE"] = np.zeros((ROWS, 1), np.float32)
    return column


def test_the_worker_reads_the_anomaly_threshold_where_the_model_declares_it() -> None:
    scores, asked = _answer("", _outputs(ANOMALY_THRESHOLD=math.inf))
    assert ANOMALY_THRESHOLD in asked
    assert scores.anomaly_threshold is not None
    assert (scores.anomaly_threshold == math.inf).all()
    assert scores.rows([2, 0]).anomaly_threshold.tolist() == [math.inf, math.inf]  # type: ignore[union-attr]


def test_a_model_without_the_output_keeps_working_with_nan() -> None:
    # Not declared: not asked for; the rows carry NaN and the worker's setting applies.
    scores, asked = _answer("no anomaly threshold", _outputs())
    assert ANOMALY_THRESHOLD not in asked
    assert scores.anomaly_threshold is not None and np.isnan(scores.anomaly_threshold).all()
    # Declared, but a version folder older than the config answers without it.
    scores, asked = _answer("", _outputs())
    assert ANOMALY_THRESHOLD in asked
    assert scores.anomaly_threshold is not None and np.isnan(scores.anomaly_threshold).all()
    assert scores.anomaly.tolist() == [0.5] * ROWS


def test_the_pipeline_passes_each_rows_anomaly_threshold_to_the_rules() -> None:
    from stream.worker.pipeline import ScoringPipeline
    from tests.support.pipeline import MemoryTable, RecordingOutputs

    sink = RecordingOutputs()
    pipeline = ScoringPipeline(
        make_settings(),
        MemoryTable(),
        None,
        sink,
        sink,  # type: ignore[arg-type]
    )
    states = [_state(), _state(), _state()]
    model = ModelScores(
        churn=np.full(3, np.nan, np.float32),
        purchase=np.full(3, np.nan, np.float32),
        anomaly=np.full(3, 0.97, np.float32),
        model_versions=["6"] * 3,
        anomaly_threshold=np.array([0.96, np.inf, np.nan], np.float32),
    )
    _, _, alerts = pipeline._results(["a", "b", "c"], states, model)
    raised = {a.user_id: a.threshold for a in alerts if a.kind == ANOMALY}
    assert raised == {"a": pytest.approx(0.96), "c": 0.95}
