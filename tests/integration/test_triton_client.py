"""The worker's Triton client against a tritonserver that goes away and comes back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from stream.contract.features import NAMES
from stream.contract.tokenizer import NUM_FIELDS
from stream.settings import PROJECT_ROOT, Settings
from stream.stack import local, process, triton
from stream.stack.process import free_port
from stream.worker.triton_client import TritonScorer
from tests.conftest import make_settings

pytestmark = pytest.mark.integration


def own_triton(stack_settings: Settings, run_dir: Path) -> Settings:
    """A second tritonserver of this test's own, on free ports, so it can be stopped."""
    return make_settings(
        **{
            **stack_settings.model_dump(),
            "triton_http_url": f"127.0.0.1:{free_port()}",
            "triton_grpc_url": f"127.0.0.1:{free_port()}",
            "triton_metrics_port": free_port(),
            "run_dir": run_dir,
            "retry_max_backoff_s": 0.5,
        }
    )


async def test_scoring_waits_for_triton_and_resumes(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = own_triton(stack_settings, tmp_path)
    tokens = np.zeros((300, settings.sequence_length, NUM_FIELDS), dtype=np.int32)
    tokens[:, -5:, 0] = 3  # five views each
    features = np.random.default_rng(0).normal(size=(300, len(NAMES))).astype(np.float32)
    scorer = TritonScorer(settings)
    try:
        # Nothing listens yet: start() keeps retrying instead of failing.
        starting = asyncio.ensure_future(scorer.start())
        await asyncio.sleep(1.5)
        assert not starting.done()
        await asyncio.to_thread(local.start_triton, settings, 60.0)
        await asyncio.wait_for(starting, 30)

        scores = await scorer.score(tokens, None, features)
        assert scores.churn.shape == (300,) and len(scores.model_versions) == 300
        assert np.isfinite(scores.churn).all()

        # Triton goes down mid-stream: the call waits, then completes once it is back.
        await asyncio.to_thread(process.stop, settings.run_dir, triton.NAME)
        pending = asyncio.ensure_future(scorer.score(tokens, None, features))
        await asyncio.sleep(2.0)
        assert not pending.done()
        await asyncio.to_thread(local.start_triton, settings, 60.0)
        again = await asyncio.wait_for(pending, 60)
        np.testing.assert_allclose(again.churn, scores.churn, rtol=0, atol=1e-6)
    finally:
        await scorer.close()
        process.stop(settings.run_dir, triton.NAME)


async def test_a_request_the_model_refuses_comes_back_rejected_not_retried(
    stack_settings: Settings,
) -> None:
    """Token ids outside the model's vocabulary: the model answers INVALID_ARGUMENT for that
    request, which the worker dead-letters (model_rejected) instead of retrying."""
    settings = make_settings(**{**stack_settings.model_dump(), "batch_size": 2})
    tokens = np.zeros((4, settings.sequence_length, NUM_FIELDS), dtype=np.int32)
    tokens[:, -5:, 0] = 3
    tokens[2, -1, 0] = 60_000  # the third sequence, in the second request of two
    # The served version scores churn from the behaviour features (its feature head).
    features = np.zeros((4, len(NAMES)), dtype=np.float32)
    scorer = TritonScorer(settings)
    try:
        await scorer.start()
        scores = await asyncio.wait_for(scorer.score(tokens, None, features), 30)
    finally:
        await scorer.close()
    assert scores.rejected[:2] == [None, None]
    assert scores.rejected[2] is not None and "INVALID_ARGUMENT" in scores.rejected[2]
    assert scores.rejected[3] == scores.rejected[2]  # the whole request, not one row
    assert np.isfinite(scores.churn[:2]).all() and np.isnan(scores.churn[2:]).all()


async def test_item_hashes_go_out_and_next_items_and_threshold_come_back(
    stack_settings: Settings,
) -> None:
    """Against the served version: next items of its own vocabulary for the users' item
    hashes, its churn threshold on every row (its churn head reads the features sent), and
    rows(keep) keeping them with their users; a refused request's rows get neither."""
    folder = max(
        (p for p in (PROJECT_ROOT / "model_repo/clickscore").iterdir() if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    items = json.loads((folder / "items.json").read_text())
    threshold = json.loads((folder / "model_config.json").read_text())["alert_thresholds"]
    settings = make_settings(**{**stack_settings.model_dump(), "batch_size": 2})
    tokens = np.zeros((4, settings.sequence_length, NUM_FIELDS), dtype=np.int32)
    tokens[:, -5:, 0] = 3
    tokens[3, -1, 0] = 60_000  # the fourth sequence: the second request of two is refused
    hashes = np.zeros(tokens.shape[:2], dtype=np.int64)
    hashes[:, -5:] = np.array(items["hashes"][:20], dtype=np.int64).reshape(4, 5)
    features = np.zeros((4, len(NAMES)), dtype=np.float32)
    scorer = TritonScorer(settings)
    try:
        await scorer.start()
        assert scorer.takes_features
        scores = await asyncio.wait_for(scorer.score(tokens, hashes, features), 30)
    finally:
        await scorer.close()
    assert len(scores.next_items) == 4 and scores.next_purchase.shape == (4,)
    for row in scores.next_items[:2]:
        assert 0 < len(row) <= 10 and {item for item, _ in row} <= set(items["items"])
        assert [p for _, p in row] == sorted((p for _, p in row), reverse=True)
    assert ((scores.next_purchase[:2] >= 0) & (scores.next_purchase[:2] <= 1)).all()
    assert scores.churn_threshold is not None
    assert scores.churn_threshold[:2].tolist() == pytest.approx(
        [threshold["churn"]["threshold"]] * 2
    )
    assert scores.next_items[2:] == [[], []] and np.isnan(scores.next_purchase[2:]).all()
    kept = scores.rows([1, 0])
    assert kept.next_items == [scores.next_items[1], scores.next_items[0]]
    assert kept.next_purchase.tolist() == [scores.next_purchase[1], scores.next_purchase[0]]
