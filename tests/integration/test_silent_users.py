"""A user who goes quiet gets a churn alert without sending another event: the worker as a
real process against the real broker, Triton (the rules model) and Postgres."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.contract.events import Event
from stream.settings import Settings
from tests.support.checks import prepare, wait_until_scored, worker_settings
from tests.support.kafka import produce, read_all
from tests.support.traffic import DAY_MS, MINUTE_MS, Traffic
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

HOUR_MS = 60 * MINUTE_MS


async def _churn_alerts(settings: Settings, user: str) -> list[dict[str, object]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT alert_id, score, threshold, event_ids, event_at, reason FROM alerts "
                    "WHERE user_id = :user AND kind = 'churn'"
                ),
                {"user": user},
            )
            return [dict(r._mapping) for r in rows]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("others_arrive", ["later", "together"])
async def test_a_quiet_user_gets_a_churn_alert_without_another_event(
    settings: Settings, tmp_path: Path, others_arrive: str
) -> None:
    """later: the quiet user's events are scored first, and other users' events (a window
    without them) move event time on: the usual case. together: all in one window, as when
    a backlog is read."""
    settings = worker_settings(
        settings, silent_rescore_after_s=3600, silent_rescore_max_s=7 * 86_400
    )
    await prepare(settings)
    now_ms = int(time.time() * 1000)
    last_ms = now_ms - 3 * DAY_MS
    traffic, others = Traffic(), Traffic()
    # A day of visits 30 minutes apart, then nothing for three days. Under the rules model
    # their churn risk is 0.73 while they visit: below the 0.8 alert threshold.
    for n in range(51):
        ts = last_ms - (50 - n) * 30 * MINUTE_MS
        traffic.add(Event(f"quiet-{n}", "quiet", ts, "view", item_id=f"i{n}"))
    # Other users' events move every partition's event time to now (40 keys over 4
    # partitions); none of them has the history a churn alert needs.
    for u in range(40):
        others.add(Event(f"clock-{u}", f"clock-{u}", now_ms - u * 1000, "view", item_id="i1"))
    if others_arrive == "together":
        traffic.records += others.records
        traffic.events_per_user.update(others.events_per_user)
    await produce(settings, settings.topic_events, traffic.records)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        await wait_until_scored(settings, traffic, worker)
        if others_arrive == "later":
            assert await _churn_alerts(settings, "quiet") == []  # active, it had no alert
            await produce(settings, settings.topic_events, others.records)
            expected = {**traffic.events_per_user, **others.events_per_user}
            await wait_until_scored(settings, expected, worker)
        deadline = time.monotonic() + 60
        alerts = await _churn_alerts(settings, "quiet")
        while not alerts and time.monotonic() < deadline:
            assert worker.alive(), f"worker died:\n{worker.log_tail()}"
            await asyncio.sleep(0.5)
            alerts = await _churn_alerts(settings, "quiet")
        kafka_alerts = [
            orjson.loads(r.value) for r in await read_all(settings, settings.topic_alerts)
        ]
    finally:
        worker.stop()

    # One alert, raised by the silence: the longest level reached by now, 64 h (1 h doubling;
    # 128 h is beyond the three days), scored at last event + 64 h, the user's own last
    # events attached, and the same record on the alerts topic.
    [alert] = alerts
    silent_ms = 64 * HOUR_MS
    assert alert["reason"] == "churn risk 0.88 crossed 0.80 after 2.7 d of silence"
    assert alert["threshold"] == pytest.approx(0.8)
    assert alert["event_ids"] == ["quiet-48", "quiet-49", "quiet-50"]
    assert int(alert["event_at"].timestamp() * 1000) == last_ms + silent_ms  # type: ignore[attr-defined]
    [on_topic] = [a for a in kafka_alerts if a["user_id"] == "quiet"]
    assert on_topic["alert_id"] == alert["alert_id"]
    assert on_topic["event_ts_ms"] == last_ms + silent_ms
    # Nobody else alerted on churn: one event each is too little history.
    assert {a["user_id"] for a in kafka_alerts if a["kind"] == "churn"} == {"quiet"}
