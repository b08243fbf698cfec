"""Next items served end to end: a version trained on a stream where item B always follows
item A recommends B after A, through the real Triton, the worker, Kafka and PostgreSQL."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.contract.events import Event
from stream.contract.tokenizer import Vocabulary
from stream.settings import PROJECT_ROOT, Settings
from tests.conftest import load_model
from tests.support.checks import prepare, wait_until_scored, worker_settings
from tests.support.kafka import produce, read_all
from tests.support.worker import WorkerProcess
from trainer import export
from trainer.evaluate.next_click import train_for_serving
from trainer.fit.encoder import ClickscoreModel, ModelConfig
from trainer.fit.encoder_training import TINY_MODEL
from trainer.fit.next_event_training import NextTrainConfig

pytestmark = pytest.mark.integration
NEXT_MODEL = "clickscore-next"
CATALOGUE = [f"sku-{i}" for i in range(30)]
A, B = "sku-7", "sku-21"


def _history(user: str, rng: random.Random, start_ms: int, end_with_a: bool) -> list[Event]:
    """Random views, except that A is always followed by B; optionally ending on A."""
    items: list[str] = []
    while len(items) < 12:
        item = rng.choice(CATALOGUE)
        items += [A, B] if item == A else [item]
    if end_with_a:
        items = [i for i in items[:8] if i != A] + [A]
    return [
        Event(f"{user}-{n}", user, start_ms + n * 20_000, "view", item_id=item)
        for n, item in enumerate(items)
    ]


@pytest.fixture(scope="module")
def next_model(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A version whose next-event network learnt the stream; its score network is untrained
    (this test reads only the next items). Served beside the suite's other models."""
    rng = random.Random(0)
    events = [e for u in range(300) for e in _history(f"t{u}", rng, 1_700_000_000_000, False)]
    next_event = train_for_serving(
        events,
        sequence_length=stack_settings.sequence_length,
        train_config=NextTrainConfig(max_epochs=20, patience=20, refit=False, batch_size=32),
    )
    scores = ClickscoreModel(
        ModelConfig(
            field_sizes=Vocabulary().field_sizes,
            sequence_length=stack_settings.sequence_length,
            **TINY_MODEL,  # type: ignore[arg-type]
        )
    )
    folder = stack_settings.model_repo / NEXT_MODEL
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    config = (PROJECT_ROOT / "model_repo/clickscore/config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(
        config.replace('name: "clickscore"', f'name: "{NEXT_MODEL}"')
    )
    export.export(
        scores, Vocabulary(), folder / "1", metrics={}, training_data={}, next_event=next_event
    )
    load_model(stack_settings, NEXT_MODEL)
    return NEXT_MODEL


async def test_b_is_served_after_a_to_kafka_and_postgres(
    settings: Settings, next_model: str, tmp_path: Path
) -> None:
    settings = worker_settings(settings, triton_model=next_model)
    await prepare(settings)
    rng = random.Random(1)
    now_ms = int(time.time() * 1000)
    users = {f"u{i}": _history(f"u{i}", rng, now_ms - 600_000, True) for i in range(20)}
    records = [
        (
            e.user_id.encode(),
            orjson.dumps(
                {
                    "event_id": e.event_id,
                    "user_id": e.user_id,
                    "ts": e.ts_ms,
                    "event_type": e.event_type,
                    "item_id": e.item_id,
                }
            ),
        )
        for history in users.values()
        for e in history
    ]
    await produce(settings, settings.topic_events, records)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await wait_until_scored(settings, {u: len(h) for u, h in users.items()}, worker)
    finally:
        worker.stop()

    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT user_id, next_items FROM user_scores"))
            served = {user: items for user, items in rows}
    finally:
        await engine.dispose()
    assert set(served) == set(users)
    for user, items in served.items():
        ids = [i["item_id"] for i in items]
        assert len(ids) == 10 and set(ids) <= set(CATALOGUE), (user, ids)
        assert B in ids, (user, ids)
        probs = [i["probability"] for i in items]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6

    # The scores topic carries the same lists; the newest record per user is after its A.
    latest: dict[str, dict[str, object]] = {}
    for record in await read_all(settings, settings.topic_scores):
        score = orjson.loads(record.value)
        if score["event_count"] >= latest.get(score["user_id"], {}).get("event_count", 0):
            latest[score["user_id"]] = score
    assert set(latest) == set(users)
    for user, score in latest.items():
        assert [i["item_id"] for i in score["next_items"]] == [  # type: ignore[union-attr]
            i["item_id"] for i in served[user]
        ]
        assert 0.0 <= float(score["next_purchase"]) <= 1.0  # type: ignore[arg-type]
