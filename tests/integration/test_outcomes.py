"""Churn alerts meet their outcomes: the worker as a real process against the real broker,
Triton (the rules model) and Postgres raises silent churn alerts, later events bring some
alerted users back (one too late), `clickscore outcomes` closes the rest, and the realised
precision in Postgres and on the job's /metrics is the one counted here from the traffic."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.contract.events import Event
from stream.settings import Settings
from tests.conftest import free_port, make_settings
from tests.support.checks import prepare, wait_until_scored, worker_settings
from tests.support.kafka import produce
from tests.support.traffic import DAY_MS, MINUTE_MS, Traffic
from tests.support.worker import WorkerProcess, settings_env

pytestmark = pytest.mark.integration

HOUR_MS = 60 * MINUTE_MS
QUIET = [f"q{n}" for n in range(10)]
RETURNERS = QUIET[:4]  # back a day after their alert
LATE = QUIET[4]  # back four days after it: past the three-day horizon
TREATED = {QUIET[0], QUIET[5]}  # a retention action was recorded for their alerts


async def _query(settings: Settings, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql), params)
            return [dict(r._mapping) for r in result] if result.returns_rows else []
    finally:
        await engine.dispose()


async def _wait_rows(
    settings: Settings, sql: str, count: int, worker: WorkerProcess
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 90
    rows = await _query(settings, sql)
    while len(rows) < count and time.monotonic() < deadline:
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        await asyncio.sleep(0.5)
        rows = await _query(settings, sql)
    assert len(rows) >= count, (rows, worker.log_tail())
    return rows


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("clickscore_")
    }


async def test_realised_precision_is_the_share_of_alerted_users_who_stayed_away(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(
        settings, silent_rescore_after_s=3600, silent_rescore_max_s=7 * 86_400
    )
    horizon_ms = settings.churn_horizon_s * 1000
    await prepare(settings)
    now_ms = int(time.time() * 1000)
    last_ms = now_ms - 9 * DAY_MS  # the quiet users' last visit
    alert_ms = last_ms + 64 * HOUR_MS  # their silent churn alert (1 h doubling: 64 h)
    first, clock, later = Traffic(), Traffic(), Traffic()
    # A day of visits 30 minutes apart, then silence (tests/integration/test_silent_users.py).
    for user in QUIET:
        for n in range(51):
            ts = last_ms - (50 - n) * 30 * MINUTE_MS
            first.add(Event(f"{user}-{n}", user, ts, "view", item_id=f"i{n}"))
    # Two shoppers fill carts; one buys the next day (calibration: decile 9, one of two).
    buy_day = now_ms - 8 * DAY_MS
    for user in ("b0", "b1"):
        for n, kind in enumerate(("view", "add_to_cart", "add_to_cart")):
            first.add(Event(f"{user}-{n}", user, buy_day + n * MINUTE_MS, kind, item_id="i1"))
    # Forty one-event users move every partition's event time past the 64 h level.
    for u in range(40):
        clock.add(Event(f"c1-{u}", f"c-{u}", last_ms + 72 * HOUR_MS - u * 1000, "view"))
    for user in RETURNERS:
        later.add(Event(f"{user}-back", user, alert_ms + DAY_MS, "view", item_id="i1"))
    later.add(Event(f"{LATE}-back", LATE, alert_ms + 4 * DAY_MS, "view", item_id="i1"))
    later.add(Event("b0-buy", "b0", buy_day + DAY_MS, "purchase", item_id="i1", price=20.0))
    for u in range(40):
        later.add(Event(f"c2-{u}", f"c-{u}", now_ms - HOUR_MS - u * 1000, "view"))
    events_of: dict[str, list[int]] = {}
    for traffic in (first, clock, later):
        for _, value in traffic.records:
            event = orjson.loads(value)
            events_of.setdefault(event["user_id"], []).append(int(event["ts"]))

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    job: subprocess.Popen[bytes] | None = None
    try:
        expected = Counter(first.events_per_user)
        await produce(settings, settings.topic_events, first.records)
        await wait_until_scored(settings, expected, worker)
        await produce(settings, settings.topic_events, clock.records)
        expected += clock.events_per_user
        await wait_until_scored(settings, expected, worker)
        churn_sql = "SELECT user_id, event_at, model_version FROM alerts WHERE kind = 'churn'"
        await _wait_rows(settings, churn_sql, len(QUIET), worker)
        await produce(settings, settings.topic_events, later.records)
        expected += later.events_per_user
        await wait_until_scored(settings, expected, worker)
        # The worker decides what events decide: four came back, one came back too late.
        worker_rows = await _wait_rows(
            settings, "SELECT * FROM churn_outcomes WHERE source = 'worker'", 5, worker
        )
        alerts = await _query(settings, churn_sql)
        # Retention actions for two alerts, as `clickscore actions` records them.
        for alert in await _query(
            settings, "SELECT alert_id, user_id FROM alerts WHERE kind = 'churn'"
        ):
            if alert["user_id"] in TREATED:
                await _query(
                    settings,
                    "INSERT INTO retention_actions (alert_id, user_id, action, status) "
                    "VALUES (:a, :u, 'retention_offer', 'recorded')",
                    a=alert["alert_id"],
                    u=alert["user_id"],
                )
        worker.stop()

        port = free_port()
        job_settings = make_settings(
            **{**settings.model_dump(), "outcomes_metrics_port": port, "outcomes_min_known": 1}
        )
        job = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "outcomes", "--every", "2s"],
            env=settings_env(job_settings),
            stdout=(tmp_path / "outcomes.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        gauges: dict[str, float] = {}
        while time.monotonic() < deadline:
            assert job.poll() is None, (tmp_path / "outcomes.log").read_text()
            try:
                gauges = _scrape(port)
            except OSError:
                gauges = {}
            if gauges.get("clickscore_outcomes_runs_total", 0) >= 1:
                break
            await asyncio.sleep(0.5)
        assert gauges.get("clickscore_outcomes_runs_total", 0) >= 1, (
            tmp_path / "outcomes.log"
        ).read_text()
    finally:
        worker.stop()
        if job is not None:
            job.terminate()
            job.wait(10)

    # The outcome of each alert, counted here from the traffic: did the user send an event
    # within the horizon after it? Without one it is known once the job's clock, the newest
    # event time scored, is a horizon past the alert.
    job_now_ms = max(ts for times in events_of.values() for ts in times)
    outcomes = {
        (r["user_id"], r["alert_at"]): r
        for r in await _query(settings, "SELECT * FROM churn_outcomes")
    }
    assert {a["user_id"] for a in alerts} >= set(QUIET)
    expected_outcome = {}
    for alert in alerts:
        at_ms = int(alert["event_at"].timestamp() * 1000)
        back = any(at_ms < ts <= at_ms + horizon_ms for ts in events_of[alert["user_id"]])
        if back or at_ms + horizon_ms <= job_now_ms:
            key = (alert["user_id"], alert["event_at"])
            expected_outcome[key] = "returned" if back else "stayed_away"
    assert {k: r["outcome"] for k, r in outcomes.items()} == expected_outcome
    by_user = {user: r for (user, _), r in outcomes.items()}
    assert {u for u, r in by_user.items() if r["outcome"] == "returned"} == set(RETURNERS)
    for user in RETURNERS:  # known when they came back, by the worker
        assert by_user[user]["source"] == "worker"
        assert by_user[user]["known_at"] == by_user[user]["returned_at"]
        assert int(by_user[user]["returned_at"].timestamp() * 1000) == alert_ms + DAY_MS
    late = by_user[LATE]  # came back after the horizon: stayed away, decided by the worker
    assert (late["outcome"], late["source"]) == ("stayed_away", "worker")
    assert late["known_at"] - late["alert_at"] == timedelta(milliseconds=horizon_ms)
    assert {u for u, r in by_user.items() if r["source"] == "job"} == set(QUIET[5:])
    assert len(worker_rows) == 5

    # Realised precision per version and group: stayed away / known, treated apart.
    daily = await _query(
        settings,
        "SELECT model_version, treated, sum(alerts) AS alerts, sum(known) AS known, "
        "sum(stayed_away) AS stayed, sum(returned) AS returned FROM churn_quality_daily "
        "GROUP BY 1, 2",
    )
    version = alerts[0]["model_version"]
    for group, treated in (("untreated", False), ("treated", True)):
        raised = [a for a in alerts if (a["user_id"] in TREATED) == treated]
        known = [k for k in expected_outcome if (k[0] in TREATED) == treated]
        stayed = sum(expected_outcome[k] == "stayed_away" for k in known)
        rows = [r for r in daily if r["treated"] == treated]
        assert [(r["model_version"], r["alerts"], r["known"], r["stayed"]) for r in rows] == [
            (version, len(raised), len(known), stayed)
        ]
        # The gauge counts the days whose outcomes are all decided: the quiet users' alerts.
        decided = [k for k in known if k[0] in QUIET]
        stayed = sum(expected_outcome[k] == "stayed_away" for k in decided)
        sample = f'clickscore_churn_precision_realised{{group="{group}",version="{version}"}}'
        assert gauges[sample] == pytest.approx(stayed / len(decided)), gauges
        print(f"{group}: {stayed} of {len(decided)} alerted users stayed away: {gauges[sample]}")
    assert gauges["clickscore_outcomes_last_recorded_timestamp_seconds"] > 0

    # Recall, counted here: users silent for a horizon by the job's clock, whose last event
    # fell in the gauge's days, caught if a churn alert came at or after that last event
    # (treated or not: a treated churner still stopped).
    until = (datetime.fromtimestamp(job_now_ms / 1000, UTC) - timedelta(days=3)).date()
    churners = caught = 0
    for user, times in events_of.items():
        last = max(times)
        day = datetime.fromtimestamp(last / 1000, UTC).date()
        if last + horizon_ms > job_now_ms or not until - timedelta(days=7) <= day < until:
            continue
        after = [
            a for a in alerts if a["user_id"] == user and a["event_at"].timestamp() * 1000 >= last
        ]
        churners += 1
        caught += bool(after)
    recall = gauges[f'clickscore_churn_recall_realised{{version="{version}"}}']
    assert recall == pytest.approx(caught / churners)
    print(f"recall: {caught} of {churners} who stopped had a churn alert: {recall}")

    # Purchase intent: b0 bought the day after its cart day, b1 did not (decile 9).
    [calibration] = await _query(
        settings,
        "SELECT predictions, purchases, purchase_rate FROM purchase_calibration_daily "
        "WHERE decile = 9 AND NOT treated",
    )
    assert (calibration["predictions"], calibration["purchases"]) == (2, 1)
    rate = f'clickscore_purchase_calibration_rate{{decile="9",version="{version}"}}'
    assert gauges[rate] == pytest.approx(0.5)
