"""Exported models in a real tritonserver: parity, hot swap under load, the gate, rollback.

A tritonserver of its own serves a temporary model repository (the suite's stack keeps
serving model_repo/): stream.stack.local.up on Settings pointing at the temporary folder.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc.aio as grpcclient

from stream.contract.tokenizer import Vocabulary
from stream.db import migrate
from stream.settings import PROJECT_ROOT, Settings
from stream.stack import local
from stream.stack.process import free_port
from tests.conftest import make_settings
from trainer import export, promote
from trainer.fit.encoder import ClickscoreModel
from trainer.fit.encoder_training import fit
from trainer.labels.sequences import Examples
from trainer.refresh import TrainArgs, configs, load_events, split

pytestmark = pytest.mark.integration
OUTPUTS = ("CHURN", "PURCHASE", "ANOMALY")


@pytest.fixture(scope="module")
def trained() -> tuple[ClickscoreModel, Examples]:
    """test_trainer.py's tiny model (about half a minute on two cores): these tests need real
    weights that clearly beat chance, so that the gate has something to compare."""
    settings = make_settings()
    args = TrainArgs(users=400, days=14, tiny=True)
    events, anomalies, _ = load_events(settings, args)
    parts = split(settings, events, anomalies, seed=0)
    model_config, train_config = configs(settings, args)
    net = fit(model_config, train_config, parts.pretrain, parts.train, parts.validation_tokens)
    return net, parts.test


def _inverted(net: ClickscoreModel) -> ClickscoreModel:
    """Deliberately worse: the same network with its churn and purchase logits negated, so
    its held-out ROC-AUC is exactly 1 - the original's."""
    worse = copy.deepcopy(net)
    with torch.no_grad():
        for head in (worse.churn_head, worse.purchase_head):
            head.weight.neg_()
            head.bias.neg_()
    return worse


@pytest.fixture(scope="module")
def serving(
    trained: tuple[ClickscoreModel, Examples], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("serving")
    repo = root / "repo"
    (repo / "clickscore").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "model_repo/clickscore/config.pbtxt", repo / "clickscore")
    net, _ = trained
    export.export(net, Vocabulary(), repo / "clickscore" / "1", metrics={}, training_data={})
    http, grpc, metrics, kafka = (free_port() for _ in range(4))
    settings = make_settings(
        broker_url=f"kafka://127.0.0.1:{kafka}",
        triton_http_url=f"127.0.0.1:{http}",
        triton_grpc_url=f"127.0.0.1:{grpc}",
        triton_metrics_port=metrics,
        run_dir=root / "run",
        model_repo=repo,
        model_store=root / "store",
    )
    local.up(settings, migrate=False)
    yield settings
    local.down(settings)


async def _infer(settings: Settings, tokens: np.ndarray) -> tuple[list[np.ndarray], str]:
    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    try:
        tensor = grpcclient.InferInput("TOKENS", list(tokens.shape), "INT64")
        tensor.set_data_from_numpy(tokens.astype(np.int64))
        result = await client.infer(
            settings.triton_model,
            [tensor],
            outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
        )
    finally:
        await client.close()
    return [result.as_numpy(n).reshape(-1) for n in OUTPUTS], result.get_response().model_version


async def _with_db(serving: Settings, per_test: Settings) -> Settings:
    settings = make_settings(**{**serving.model_dump(), "database_url": per_test.database_url})
    await asyncio.to_thread(migrate.upgrade, settings)
    return settings


async def test_triton_and_in_process_scores_agree(
    serving: Settings, trained: tuple[ClickscoreModel, Examples]
) -> None:
    net, heldout = trained
    tokens = heldout.tokens[:64]
    expected = net.score(torch.from_numpy(tokens))
    (churn, purchase, anomaly), _ = await _infer(serving, tokens)
    for got, want in (
        (churn, expected.churn),
        (purchase, expected.purchase),
        (anomaly, expected.anomaly),
    ):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def _candidate(settings: Settings, net: ClickscoreModel) -> Path:
    folder = promote.store_dir(settings) / str(
        export.next_version(promote.served_dir(settings), promote.store_dir(settings))
    )
    return export.export(net, Vocabulary(), folder, metrics={}, training_data={"test": True})


async def test_gate_refuses_a_worse_model_and_swap_and_rollback_lose_no_request(
    serving: Settings, settings: Settings, trained: tuple[ClickscoreModel, Examples]
) -> None:
    db = await _with_db(serving, settings)
    net, heldout = trained
    before = promote.serving_version(db)

    served = promote.heldout_metrics(promote.served_dir(db) / str(before), heldout)
    assert served["mean_roc_auc"] > 0.5 + db.promotion_margin, served
    rejected = _candidate(db, _inverted(net))
    result = await promote.promote(db, rejected, heldout)
    assert not result.promote, result.reason
    assert promote.serving_version(db) == before

    # The same weights as the serving model are "not worse": promoted, loaded under load.
    candidate = _candidate(db, net)
    tokens = heldout.tokens[:8]
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            try:
                _, version = await _infer(db, tokens)
                seen.add(version)
            except Exception as exc:
                errors.append(exc)

    async def until(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    new = int(candidate.name)
    clients = [asyncio.create_task(hammer()) for _ in range(4)]
    await until(lambda: str(before) in seen)  # the old version answered under load
    result = await promote.promote(db, candidate, heldout)
    await until(lambda: str(new) in seen)  # then the new one, with no failed request between
    stop.set()
    await asyncio.gather(*clients)
    assert result.promote, result.reason
    assert errors == []
    assert seen >= {str(before), str(new)}
    statuses = {row.version: row.status for row in await promote.table(db)}
    assert statuses[int(rejected.name)] == "rejected"
    assert statuses[new] == "serving"

    bad, previous = await promote.rollback(db)
    assert (bad, previous) == (new, before)
    _, version = await _infer(db, tokens)
    assert version == str(before)
    statuses = {row.version: row.status for row in await promote.table(db)}
    assert statuses[new] == "rolled_back" and statuses[before] == "serving"
