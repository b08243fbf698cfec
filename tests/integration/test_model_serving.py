"""`clickscore train`'s pipeline on the real stack: a version trained from the events topic
is promoted and loaded by a tritonserver of its own and answers requests shaped as the worker
sends them; a candidate whose labels are shuffled is refused with the task named while the
serving version keeps answering; a swap under load and a rollback lose no request; every
version gets its model_versions row.

The suite's broker and PostgreSQL (a topic and a database of this test's own); the Triton here
serves a temporary repository, so the suite's Triton keeps serving model_repo/.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc.aio as grpcclient

from stream.contract.events import event_to_json
from stream.contract.tokenizer import Vocabulary
from stream.datasets.synthetic import SyntheticConfig, generate
from stream.db import migrate
from stream.settings import PROJECT_ROOT, Settings
from stream.stack import local
from stream.stack.process import free_port
from tests.conftest import make_settings
from tests.support.kafka import create_topics, produce
from trainer import publish
from trainer.export import next_version
from trainer.history import Source
from trainer.labels import points as labels
from trainer.labels.scoring_points import RowSpec
from trainer.labels.sequences import group_by_user
from trainer.pipeline import TrainArgs, run

# Two pipeline runs of several minutes each on a loaded 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]
OUTPUTS = ("CHURN", "PURCHASE", "CHURN_THRESHOLD", "NEXT_ITEMS")


@pytest.fixture
def own(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    repo = tmp_path / "repo" / "clickscore"
    repo.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "model_repo/clickscore/config.pbtxt", repo)
    http, grpc, metrics = (free_port() for _ in range(3))
    ours = make_settings(
        **{
            **settings.model_dump(),
            "triton_http_url": f"127.0.0.1:{http}",
            "triton_grpc_url": f"127.0.0.1:{grpc}",
            "triton_metrics_port": metrics,
            "run_dir": tmp_path / "run",
            "model_repo": tmp_path / "repo",
            "model_store": tmp_path / "store",
        }
    )
    migrate.upgrade(ours)
    yield ours
    local.down(ours)


def request_rows(settings: Settings, count: int = 16) -> tuple[npt.NDArray[Any], ...]:
    """Real users' states as the worker sends them (tokens, item hashes, features)."""
    events, _ = generate(SyntheticConfig(users=20, days=7, seed=11))
    by_user = group_by_user(events)
    spec = RowSpec(3 * 86_400_000, 2 * 86_400_000, sequence_length=64)
    rows = labels.labelled_points(by_user, Vocabulary(), spec, max(e.ts_ms for e in events))
    rows = rows.subset([i < count for i in range(len(rows))])
    tokens, hashes, features = rows.inputs(Vocabulary(), settings.sequence_length)
    return tokens, hashes, features.astype(np.float32)


async def infer(
    settings: Settings, rows: tuple[npt.NDArray[Any], ...]
) -> tuple[dict[str, Any], str]:
    client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
    try:
        inputs = []
        for name, array, kind in zip(
            ("TOKENS", "ITEM_HASHES", "FEATURES"), rows, ("INT64", "INT64", "FP32"), strict=True
        ):
            tensor = grpcclient.InferInput(name, list(array.shape), kind)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
        result = await client.infer(settings.triton_model, inputs, outputs=outputs)
    finally:
        await client.close()
    scores = {n: result.as_numpy(n) for n in OUTPUTS}
    return scores, result.get_response().model_version


def shuffled_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels step with churn and purchase labels permuted among rows: a candidate that
    learnt nothing about either task, from the same history."""
    real = labels.labelled_points
    rng = np.random.default_rng(0)

    def shuffle(*args: Any, **kwargs: Any) -> labels.Points:
        points = real(*args, **kwargs)
        if not kwargs.get("every_point"):
            points.churn = list(rng.permutation(points.churn))
            points.purchase = list(rng.permutation(points.purchase))
        return points

    monkeypatch.setattr("trainer.pipeline.labelled_points", shuffle)


async def test_a_topic_version_is_served_a_shuffled_one_refused_and_swaps_lose_no_request(
    own: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, _ = generate(SyntheticConfig(users=600, days=10, seed=5))
    await create_topics(own, [own.topic_events], 1)
    await produce(own, own.topic_events, [(e.user_id.encode(), event_to_json(e)) for e in events])
    train = TrainArgs(source=Source(data="topic"), tiny=True)

    # Nothing serves: every task is new; the version is moved in, then Triton starts on it.
    first = await asyncio.to_thread(run, own, train)
    assert first.promoted, first.reason
    assert {t["verdict"] for t in first.tasks.values()} == {"new"}
    await asyncio.to_thread(local.start_triton, own, 120.0)
    rows = request_rows(own)
    scores, version = await infer(own, rows)
    assert version == str(first.version)
    assert np.all((scores["CHURN"] >= 0) & (scores["CHURN"] <= 1))
    assert scores["NEXT_ITEMS"].shape == (len(rows[0]), 10)

    # Shuffled labels: refused, the churn task named with its figures; v1 keeps answering.
    with monkeypatch.context() as patch:
        shuffled_labels(patch)
        worse = await asyncio.to_thread(run, own, train)
    assert not worse.promoted
    assert "churn: worse: roc_auc" in worse.reason, worse.reason
    assert publish.serving_version(own) == first.version
    assert not (own.model_repo / "clickscore" / str(worse.version)).exists()
    assert (await infer(own, rows))[1] == str(first.version)

    # A new version swapped in while requests flow: v1's files as the next version, through
    # publish (a third training would add minutes and test nothing more here).
    again_version = next_version(publish.served_dir(own), publish.store_dir(own))
    copy = publish.store_dir(own) / str(again_version)
    shutil.copytree(publish.served_dir(own) / str(first.version), copy)
    errors: list[BaseException] = []
    seen: set[str] = set()
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            try:
                seen.add((await infer(own, rows))[1])
            except Exception as exc:  # any failed request fails the test below
                errors.append(exc)

    async def until(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    clients = [asyncio.create_task(hammer()) for _ in range(3)]
    await until(lambda: str(first.version) in seen)
    await publish.publish(own, copy, True, {"gate": {"swap": "test"}})
    await until(lambda: str(again_version) in seen)
    stop.set()
    await asyncio.gather(*clients)
    assert errors == []
    assert seen >= {str(first.version), str(again_version)}

    rows_by_version = {row.version: row for row in await publish.table(own)}
    assert rows_by_version[worse.version].status == "rejected"
    assert "churn" in rows_by_version[worse.version].metrics["gate"]
    assert rows_by_version[first.version].status == "retired"
    assert rows_by_version[again_version].status == "serving"

    bad, previous = await publish.rollback(own)
    assert (bad, previous) == (again_version, first.version)
    assert (await infer(own, rows))[1] == str(first.version)
    statuses = {row.version: row.status for row in await publish.table(own)}
    assert statuses[again_version] == "rolled_back" and statuses[first.version] == "serving"
