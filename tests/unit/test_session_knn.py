"""Session kNN at serving time (stream/serving/session_knn.py): the same recommendations as the
V-SkNN baseline on raw item ids, a round trip through its file, the cap, and blend_top."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stream.serving.session_knn import KnnConfig, SessionIndex, blend_top
from trainer.baselines.sessions import VSKNN_GRID, VSkNN, VSkNNConfig


def _fixture(seed: int = 0) -> tuple[dict[str, tuple[list[str], int]], dict[str, int]]:
    """400 short sessions over 60 items with a few popular ones (Zipf), random end times."""
    rng = np.random.default_rng(seed)
    sessions = {}
    for i in range(400):
        items = [f"i{int(x) % 60}" for x in rng.zipf(1.6, rng.integers(1, 8))]
        sessions[f"s{i:03d}"] = (items, int(rng.integers(0, 10_000)))
    counts = Counter(i for items, _ in sessions.values() for i in items)
    ids = {name: j + 2 for j, (name, _) in enumerate(counts.most_common())}
    return sessions, ids


def _index(
    sessions: dict[str, tuple[list[str], int]], ids: dict[str, int], c: KnnConfig
) -> SessionIndex:
    return SessionIndex.build(
        [[ids[i] for i in items] for items, _ in sessions.values()],
        [end for _, end in sessions.values()],
        list(sessions),
        c,
        first_id=2,
        end_id=2 + len(ids),
    )


@pytest.mark.parametrize(
    "config", [*VSKNN_GRID[::5], VSkNNConfig(k=5, sample_size=20)], ids=lambda c: str(c.__dict__)
)
def test_recommendations_agree_with_the_vsknn_baseline(config: VSkNNConfig) -> None:
    sessions, ids = _fixture()
    names = {v: k for k, v in ids.items()}
    baseline = VSkNN(sessions, config)
    index = _index(sessions, ids, KnnConfig(**config.__dict__))
    rng = np.random.default_rng(1)
    prefixes = [[f"i{int(x) % 60}" for x in rng.zipf(1.6, rng.integers(1, 6))] for _ in range(60)]
    prefixes = [[i for i in p if i in ids] or ["i1"] for p in prefixes]
    grid = np.zeros((len(prefixes), 8), dtype=np.int64)  # left-padded with 0, as served
    for row, prefix in enumerate(prefixes):
        grid[row, 8 - len(prefix) :] = [ids[i] for i in prefix]
    grid[:, 0] = np.where(grid[:, 0] == 0, 1, grid[:, 0])  # NO_ITEM (an event without item)
    top_ids, top_scores = index.recommend(grid, 100)
    compared = 0
    for row, prefix in enumerate(prefixes):
        want = {i: s for i, s in baseline.scores(prefix).items() if s > 0}
        total = sum(want.values())
        got = {
            names[int(i)]: float(s) for i, s in zip(top_ids[row], top_scores[row], strict=True) if i
        }
        assert set(got) == set(want), prefix
        for item, value in got.items():
            assert value == pytest.approx(want[item] / total, rel=1e-5, abs=1e-7)
        ranked = baseline.recommend(prefix)
        # The order agrees wherever scores differ (ties: raw strings there, ids here).
        distinct = [
            i for i in ranked if sum(abs(v - want[i]) <= 1e-9 * want[i] for v in want.values()) == 1
        ]
        mine = [names[int(i)] for i in top_ids[row] if i and names[int(i)] in distinct]
        assert mine[: len(distinct)] == [i for i in ranked if i in distinct][: len(mine)]
        compared += len(got)
    assert compared > 200  # most rows recommend several items


def test_the_index_round_trips_through_its_file_and_keeps_the_latest_sessions(
    tmp_path: Path,
) -> None:
    sessions, ids = _fixture()
    config = KnnConfig(k=20, weighting="linear", idf_weighting=0.0)
    capped = SessionIndex.build(
        [[ids[i] for i in items] for items, _ in sessions.values()],
        [end for _, end in sessions.values()],
        list(sessions),
        config,
        first_id=2,
        end_id=2 + len(ids),
        max_sessions=100,
    )
    assert capped.sessions == 100
    latest = sorted(sessions, key=lambda k: (sessions[k][1], k))[-100:]
    assert capped.sessions == len(latest)
    capped.save(tmp_path)
    loaded = SessionIndex.load(tmp_path)
    assert loaded.config == config and loaded.sessions == 100
    queries = np.array([[0, 0, ids["i1"], ids["i2"]], [0, 0, 0, ids["i3"]], [0, 0, 0, 0]])
    for a, b in zip(capped.recommend(queries, 10), loaded.recommend(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not loaded.recommend(queries, 10)[0][2].any()  # nothing known: nothing recommended


def test_scores_are_a_share_of_the_neighbourhood() -> None:
    sessions, ids = _fixture()
    index = _index(sessions, ids, KnnConfig())
    top_ids, scores = index.recommend(np.array([[ids["i1"], ids["i2"]]]), 500)
    assert scores.sum() == pytest.approx(1.0, rel=1e-5)
    assert (np.diff(scores[0][top_ids[0] > 0]) <= 0).all()


def test_blend_with_weight_one_or_zero_is_each_side() -> None:
    net_ids = np.array([[5, 3, 9, 2], [7, 6, 0, 0]])
    net_probs = np.array([[0.4, 0.2, 0.1, 0.05], [0.5, 0.3, 0.0, 0.0]], dtype=np.float32)
    knn_ids = np.array([[3, 8, 4, 0], [0, 0, 0, 0]])
    knn_scores = np.array([[0.5, 0.3, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    ids, probs = blend_top(net_ids, net_probs, knn_ids, knn_scores, 1.0, 4)
    np.testing.assert_array_equal(ids, net_ids)
    np.testing.assert_allclose(probs, net_probs, rtol=1e-6)
    ids, probs = blend_top(net_ids, net_probs, knn_ids, knn_scores, 0.0, 4)
    np.testing.assert_array_equal(ids[0], knn_ids[0])
    np.testing.assert_allclose(probs[0], knn_scores[0], rtol=1e-6)
    # A row the kNN has nothing for keeps the network's items whatever the weight.
    np.testing.assert_array_equal(ids[1], net_ids[1])


def test_blend_adds_the_two_sides_on_a_shared_item() -> None:
    net_ids, net_probs = np.array([[5, 3]]), np.array([[0.5, 0.3]], dtype=np.float32)
    knn_ids, knn_scores = np.array([[3, 8]]), np.array([[0.5, 0.5]], dtype=np.float32)
    ids, probs = blend_top(net_ids, net_probs, knn_ids, knn_scores, 0.5, 3)
    # Network 0.625 / 0.375 of its mass 0.8, kNN 0.5 / 0.5 of 1.0; mixed mass 0.9.
    assert ids.tolist() == [[3, 5, 8]]
    np.testing.assert_allclose(probs, [[0.9 * 0.4375, 0.9 * 0.3125, 0.9 * 0.25]], rtol=1e-6)


def test_an_item_no_session_holds_finds_nothing() -> None:
    index = SessionIndex.build(
        [[2, 3], [3, 4]], [1, 2], ["a", "b"], KnnConfig(), first_id=2, end_id=6
    )
    ids, scores = index.recommend(np.array([[0, 5], [5, 3]]), 3)
    assert not ids[0].any() and not scores[0].any()  # id 5 is known, but in no session
    assert set(ids[1].tolist()) == {2, 3, 4}
