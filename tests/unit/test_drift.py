"""PSI, reference histograms and the worker's rolling drift window (no services)."""

from __future__ import annotations

import math
import random

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import REGISTRY

from stream.contract.drift import (
    ChurnPromise,
    Histogram,
    Reference,
    bin_counts,
    psi,
    quantile_edges,
)
from stream.contract.events import Event, event_to_json
from stream.contract.features import NAMES, stack_features
from stream.contract.state import UserState, apply_event, stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.scoring.drift import SCORE, DriftMonitor, RollingCounts
from stream.worker.pipeline import ScoringPipeline
from stream.worker.triton_client import ModelScores
from stream.worker.window import Message
from tests.conftest import make_settings
from tests.support.pipeline import MemoryTable, RecordingOutputs

NOW_MS = 1_800_000_000_000


def test_psi_of_a_hand_computed_case() -> None:
    # Shares 0.25 / 0.25 / 0.5 against 0.5 / 0.25 / 0.25:
    # (0.5 - 0.25) ln(0.5 / 0.25) + 0 + (0.25 - 0.5) ln(0.25 / 0.5) = 0.5 ln 2.
    assert psi([25, 25, 50], [50, 25, 25]) == pytest.approx(0.5 * math.log(2), abs=1e-12)
    assert psi([1, 1, 2], [10, 10, 20]) == 0.0  # counts or shares: only shares matter
    # An empty reference bin counts as 0.0001 (Evidently's convention), so it stays finite:
    # 0 + (0.25 - 0.5) ln(0.25 / 0.5) + (0.25 - 0.0001) ln(0.25 / 0.0001).
    expected = -0.25 * math.log(0.5) + (0.25 - 1e-4) * math.log(0.25 / 1e-4)
    assert psi([5, 5, 0], [2, 1, 1]) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(psi([1, 2], [0, 0]))
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])


def test_quantile_edges_make_equal_bins_and_merge_a_point_mass() -> None:
    values = np.arange(100.0)
    edges = quantile_edges(values, bins=4)
    assert edges.tolist() == [24.75, 49.5, 74.25]
    assert bin_counts(values, edges).tolist() == [25, 25, 25, 25]
    # Seven in ten never purchased: the zeros share one bin, whatever the quantiles say.
    mass = np.array([0.0] * 70 + list(range(1, 31)), dtype=np.float64)
    edges = quantile_edges(mass, bins=10)
    counts = bin_counts(mass, edges)
    assert counts.sum() == 100 and counts.max() >= 70
    assert bin_counts([np.nan, np.inf, 5.0], edges).sum() == 1  # non-finite: not counted


def test_a_reference_survives_its_file_format() -> None:
    rng = np.random.default_rng(0)
    reference = Reference(
        version="7",
        scores={"churn_risk": Histogram.of(rng.random(500))},
        features={"log_events": Histogram.of(rng.normal(size=500))},
        churn=ChurnPromise(precision=0.6, alerts=188),
        source={"data": "test"},
    )
    again = Reference.from_dict(reference.to_dict())
    assert again.version == "7" and again.source == {"data": "test"}
    assert (
        again.scores["churn_risk"].counts.tolist() == reference.scores["churn_risk"].counts.tolist()
    )
    assert again.features["log_events"].edges.tolist() == pytest.approx(
        reference.features["log_events"].edges.tolist()
    )
    assert again.churn == ChurnPromise(0.6, 188)
    assert again.churn.interval == pytest.approx(1.96 * math.sqrt(0.6 * 0.4 / 188))
    assert reference.scores["churn_risk"].total == 500
    assert len(reference.scores["churn_risk"].counts) <= 30


def test_the_rolling_window_drops_whole_slices_as_time_passes() -> None:
    edges = np.array([0.5])
    counts = RollingCounts([edges], window_s=60, slices=6)  # slices of 10 s
    counts.add(np.array([[0.1], [0.9]]), now_s=1000.0)
    counts.add(np.array([[0.2]]), now_s=1035.0)
    assert counts.totals(1035.0)[0].tolist() == [2, 1]
    assert counts.totals(1059.0)[0].tolist() == [2, 1]  # slot 100 is still within 60 s
    assert counts.totals(1060.0)[0].tolist() == [1, 0]  # slot 100 has left the window
    assert counts.totals(1100.0)[0].tolist() == [0, 0]
    counts.add(np.array([[0.7]]), now_s=1100.0)  # reuses a slot: the old counts are gone
    assert counts.totals(1100.0)[0].tolist() == [0, 1]


def test_the_monitor_reports_only_with_enough_values_and_only_for_known_versions() -> None:
    rng = np.random.default_rng(1)
    reference = Reference("3", scores={"churn_risk": Histogram.of(rng.random(2000))})
    monitor = DriftMonitor(lambda v: reference if v == "3" else None, 3600, min_count=100)
    monitor.observe("3", {"churn_risk": rng.random(99)}, None, now_s=0.0)
    monitor.observe("4", {"churn_risk": rng.random(500)}, None, now_s=0.0)
    [reading] = monitor.readings(now_s=1.0)
    assert (reading.version, reading.kind, reading.name, reading.count) == (
        "3",
        SCORE,
        "churn_risk",
        99,
    )
    assert math.isnan(reading.psi)
    monitor.observe("3", {"churn_risk": rng.random(1)}, None, now_s=2.0)
    [reading] = monitor.readings(now_s=3.0)
    assert reading.count == 100 and math.isfinite(reading.psi)


# --- The gauge, fed by the scoring pipeline --------------------------------------------------


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def gap_scores(tokens: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.float64], ...]:
    """A model that reads the stream: churn rises with the last gaps, anomaly with carts."""
    gaps = tokens[:, -4:, 4].astype(np.float64)
    churn = _sigmoid(gaps.mean(axis=1) - 9.0)
    carts = (tokens[:, :, 0] == 6).sum(axis=1).astype(np.float64)
    return churn, np.full(len(churn), 0.5), _sigmoid(carts - 2.0)


class GapScorer:
    takes_features = True

    async def score(
        self,
        tokens: npt.NDArray[np.int32],
        item_hashes: npt.NDArray[np.int64] | None = None,
        features: npt.NDArray[np.float32] | None = None,
    ) -> ModelScores:
        churn, purchase, anomaly = (a.astype(np.float32) for a in gap_scores(tokens))
        return ModelScores(churn, purchase, anomaly, ["t"] * len(churn))


def visits(users: int, seed: int, mean_gap_s: float) -> list[list[Event]]:
    """Each user's 8 events, gaps around mean_gap_s, ending within the last hour."""
    rng = random.Random(seed)
    out = []
    for u in range(users):
        user = f"u{seed}-{u}"
        ts = NOW_MS - rng.randrange(3_600_000)
        events = []
        for n in range(8):
            kind = rng.choice(["view"] * 5 + ["add_to_cart"])
            events.append(Event(f"{user}-{n}", user, ts, kind, item_id=f"i{rng.randrange(50)}"))
            ts -= int(rng.expovariate(1 / mean_gap_s) * 1000) + 1000
        out.append(events[::-1])
    return out


def reference_of(histories: list[list[Event]]) -> Reference:
    """What the trainer's reference is: the stream's states scored as the worker scores them."""
    vocab = Vocabulary()
    states: list[UserState] = []
    for events in histories:
        state: UserState | None = None
        for event in events:
            state, _ = apply_event(state, event, vocab, 64)
        assert state is not None
        states.append(state)
    churn, purchase, anomaly = gap_scores(stack_padded(states, 64))
    features = stack_features(states, [s.last_ts_ms for s in states], vocab)
    return Reference(
        "t",
        scores={
            "churn_risk": Histogram.of(churn),
            "purchase_intent": Histogram.of(purchase),
            "anomaly": Histogram.of(anomaly),
        },
        features={name: Histogram.of(features[:, i]) for i, name in enumerate(NAMES)},
    )


async def served_psi(reference: Reference, histories: list[list[Event]]) -> dict[str, float]:
    outputs = RecordingOutputs()
    pipeline = ScoringPipeline(
        make_settings(),
        MemoryTable(),
        GapScorer(),
        outputs,
        outputs,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
        reference_of=lambda version: reference if version == "t" else None,
    )
    messages = [
        Message(e.user_id.encode(), event_to_json(e), "events", 0, offset)
        for offset, e in enumerate(e for events in histories for e in events)
    ]
    for start in range(0, len(messages), 800):
        await pipeline.process(messages[start : start + 800])
    assert len(outputs.scores) >= 1500
    found: dict[str, float] = {}
    for name in ("churn_risk", "anomaly"):
        value = REGISTRY.get_sample_value("clickscore_score_psi", {"version": "t", "score": name})
        assert value is not None, name
        found[name] = value
    for name in ("log_mean_recent_gap_hours", "log_rate_per_hour"):
        labels = {"version": "t", "feature": name}
        value = REGISTRY.get_sample_value("clickscore_feature_psi", labels)
        assert value is not None, name
        found[name] = value
    return found


async def test_a_shifted_stream_raises_the_psi_gauge_and_an_unshifted_one_does_not() -> None:
    reference = reference_of(visits(3000, seed=1, mean_gap_s=60))
    same = await served_psi(reference, visits(1500, seed=2, mean_gap_s=60))
    print("unshifted", same)
    assert max(same.values()) < 0.1, same
    # The same shoppers, ten times slower: churn scores and gap features move.
    slower = await served_psi(reference, visits(1500, seed=3, mean_gap_s=600))
    print("shifted", slower)
    assert slower["churn_risk"] > 0.25, slower
    assert slower["log_mean_recent_gap_hours"] > 0.25, slower
    assert slower["anomaly"] < 0.1, slower  # carts did not change
