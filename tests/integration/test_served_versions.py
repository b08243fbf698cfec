"""Format-2 versions through the real tritonserver and the clickscore backend: one whose
encoder serves churn, purchase and anomaly against eager PyTorch on real sequences (synthetic
users folded through the worker's state code), served beside the suite's other models; and the
served version 7, which serves no anomaly, through the worker, Kafka and PostgreSQL."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import torch
import tritonclient.grpc.aio as grpcclient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.contract.events import event_to_json
from stream.contract.state import stack_padded
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig
from stream.settings import PROJECT_ROOT, Settings
from tests.conftest import load_model
from tests.support.checks import prepare, wait_until_scored, worker_settings
from tests.support.kafka import produce, read_all
from tests.support.worker import WorkerProcess
from trainer.export.version_folder import ServedParts, export_version
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.encoder_training import TINY_MODEL
from trainer.labels.scoring_points import ScoringRules, scoring_points, synthetic_users

pytestmark = pytest.mark.integration
ENCODER_MODEL = "clickscore-encoder"
SERVED_MODEL = "clickscore"  # model_repo/clickscore (worker_settings picks a rules fixture)
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY", "ANOMALY_THRESHOLD", "NEXT_ITEMS", "NEXT_PURCHASE")


def _tokens(length: int) -> npt.NDArray[np.int64]:
    vocab = Vocabulary()
    by_user, _, end_ms = synthetic_users(SyntheticConfig(users=12, days=3, seed=5))
    states = [
        point.state
        for user in sorted(by_user)
        for point in scoring_points(by_user[user], vocab, length, end_ms, ScoringRules())
    ]
    return stack_padded(states, length).astype(np.int64)[:: max(1, len(states) // 200)][:200]


@pytest.fixture(scope="module")
def encoder_model(stack_settings: Settings) -> tuple[str, ClickscoreModel]:
    torch.manual_seed(0)
    config = ModelConfig(
        field_sizes=Vocabulary().field_sizes,
        sequence_length=stack_settings.sequence_length,
        **TINY_MODEL,  # type: ignore[arg-type]
    )
    model = ClickscoreModel(config).eval()
    with torch.inference_mode():
        model.calibrate(model.score(torch.from_numpy(_tokens(config.sequence_length))).surprise)
    folder = stack_settings.model_repo / ENCODER_MODEL
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    config_text = (PROJECT_ROOT / "model_repo/clickscore/config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(
        config_text.replace('name: "clickscore"', f'name: "{ENCODER_MODEL}"')
    )
    parts = ServedParts(
        served={
            "churn": "encoder",
            "purchase": "encoder",
            "anomaly": "encoder",
            "next_items": None,
        },
        vocabulary=Vocabulary(),
        encoder=model,
        feature_head=None,
        next_event=None,
        session_knn=None,
        blend_weight=None,
        alert_thresholds={"anomaly": {"threshold": 0.97}},
        record={"metrics": {}},
        sequence_length=config.sequence_length,
    )
    export_version(parts, folder / "1")
    load_model(stack_settings, ENCODER_MODEL)
    return ENCODER_MODEL, model


async def test_triton_serves_the_encoders_scores_as_eager_pytorch_computes_them(
    stack_settings: Settings, encoder_model: tuple[str, ClickscoreModel]
) -> None:
    name, model = encoder_model
    tokens = _tokens(stack_settings.sequence_length)
    client = grpcclient.InferenceServerClient(stack_settings.triton_grpc_url)
    try:
        tensor = grpcclient.InferInput("TOKENS", list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens)
        outputs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
        result = await client.infer(name, [tensor], outputs=outputs)
    finally:
        await client.close()
    with torch.inference_mode():
        eager = model.score(torch.from_numpy(tokens))
    for output, want in (
        ("CHURN", eager.churn),
        ("PURCHASE", eager.purchase),
        ("ANOMALY", eager.anomaly),
    ):
        np.testing.assert_allclose(result.as_numpy(output)[:, 0], want.numpy(), atol=1e-5, rtol=0)
    assert eager.anomaly.numpy().std() > 0  # calibrated scores that vary, not a constant
    assert (result.as_numpy("ANOMALY_THRESHOLD") == np.float32(0.97)).all()
    # No next items are served: empty names and NaN purchase, as the config says.
    assert (result.as_numpy("NEXT_ITEMS") == b"").all()
    assert np.isnan(result.as_numpy("NEXT_PURCHASE")).all()


async def test_the_worker_scores_with_version_7_and_writes_no_nan_for_its_unserved_anomaly(
    settings: Settings, tmp_path: Path
) -> None:
    """The served version (7, no anomaly output) through the worker, Kafka and PostgreSQL:
    churn and purchase from the feature head, anomaly NULL in PostgreSQL and null on the
    scores topic, no model anomaly alert, next items of its vocabulary."""
    settings = worker_settings(settings, triton_model=SERVED_MODEL)
    await prepare(settings)
    by_user, _, _ = synthetic_users(SyntheticConfig(users=15, days=2, seed=9))
    now_ms = int(time.time() * 1000)
    users = {u: events[-20:] for u, events in by_user.items() if len(events) >= 3}
    shift = now_ms - max(e.ts_ms for events in users.values() for e in events)
    records = [
        (e.user_id.encode(), event_to_json(replace(e, ts_ms=e.ts_ms + shift)))
        for events in users.values()
        for e in events
    ]
    await produce(settings, settings.topic_events, records)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await wait_until_scored(settings, {u: len(e) for u, e in users.items()}, worker)
    finally:
        worker.stop()
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT user_id, churn_risk, purchase_intent, anomaly, model_version, "
                        "next_items FROM user_scores"
                    )
                )
            ).all()
            kinds = (await conn.execute(text("SELECT DISTINCT kind FROM alerts"))).scalars()
            alert_kinds = set(kinds)
    finally:
        await engine.dispose()
    assert {r.user_id for r in rows} == set(users)
    for row in rows:
        assert row.model_version == "7" and row.anomaly is None
        assert 0 <= row.churn_risk <= 1 and 0 <= row.purchase_intent <= 1
        assert not math.isnan(row.churn_risk) and len(row.next_items) == 10
    assert "anomaly" not in alert_kinds
    for record in await read_all(settings, settings.topic_scores):
        score = orjson.loads(record.value)
        assert score["anomaly"] is None and score["churn_risk"] is not None
