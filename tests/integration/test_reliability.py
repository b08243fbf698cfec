"""The black-box fault suite: inputs and faults that used to stop the worker or count twice.

Each test runs `clickscore worker` as a real process against the real broker, Triton and
PostgreSQL, injects its fault, waits for an observable event (never a fixed sleep), and ends
with exact per-user event counts in PostgreSQL. Each prints its counts: lost and
double-counted must both be 0, and the worker alive (or stopped by the test itself).
docs/reliability.md maps each case to the mechanism it proves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream.contract.events import Event, event_to_json
from stream.ops import dlq
from stream.settings import Settings
from stream.stack import broker, local, postgres, process
from stream.stack.process import free_port
from stream.worker.tables import TABLE_NAME
from tests.conftest import FAILING_RULES_MODEL, load_model
from tests.support.checks import (
    committed_total,
    metric,
    prepare,
    scored_event_counts,
    scrape_metrics,
    tally,
    wait_until_scored,
    worker_settings,
)
from tests.support.kafka import create_topics, produce, read_all
from tests.support.traffic import build_traffic, valid_counts
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def changelog_topic(settings: Settings) -> str:
    return f"{settings.consumer_group}-{TABLE_NAME}-changelog"


def health(settings: Settings) -> tuple[int, dict[str, object]]:
    url = f"http://{settings.metrics_host}:{settings.metrics_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def produce_large(settings: Settings, key: bytes, value: bytes | None) -> None:
    """One record through a producer that allows what the broker accepts (3 MB)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.broker_servers, max_request_size=3 * 1024 * 1024
    )
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic_events, key=key, value=value)
    finally:
        await producer.stop()


def print_counts(case: str, lost: int, duplicated: int, **more: object) -> None:
    extra = "".join(f", {name.replace('_', ' ')} {value}" for name, value in more.items())
    print(f"\n[{case}] lost {lost}, double-counted {duplicated}{extra}")


# --- 1. a null value, a 2 MB message and a poisoned message, amid normal traffic -------------


async def test_null_oversized_and_poisoned_messages_are_dead_lettered_and_the_rest_scored(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(settings)
    await prepare(settings)
    now_ms = int(time.time() * 1000)
    traffic = build_traffic(now_ms, users=80)
    # A poisoned message: valid on its own, but its user's stored state is damaged, so
    # folding it raises. Its state sits in the table's changelog before the worker starts.
    poisoned = "poisoned-1"
    await create_topics(settings, [changelog_topic(settings)], settings.topic_partitions)
    await produce(settings, changelog_topic(settings), [(poisoned.encode(), b"\x07damaged")])
    poison = event_to_json(Event(f"{poisoned}-0", poisoned, now_ms - 1000, "view"))
    records = list(traffic.records)
    middle = len(records) // 2
    records.insert(middle, (poisoned.encode(), poison))
    await produce(settings, settings.topic_events, records[:middle])
    await produce_large(settings, b"user-1", None)  # a tombstone
    oversized = b'{"event_id":"big","user_id":"user-2","pad":"' + b"x" * 2_000_000 + b'"}'
    await produce_large(settings, b"user-2", oversized)
    await produce(settings, settings.topic_events, records[middle:])

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        counts = await wait_until_scored(settings, traffic, worker)
        bad = len(traffic.bad) + 3
        dead = await read_all(settings, settings.topic_dead_letter, until=bad)
        assert worker.alive(), worker.log_tail()
    finally:
        worker.stop()

    reasons = Counter(dict(r.headers)["clickscore.reason"].decode() for r in dead)
    assert reasons["null_value"] == 1
    assert reasons["processing_error"] == 1
    big = [r for r in dead if dict(r.headers).get("clickscore.truncated") == b"true"]
    assert len(big) == 1
    headers = dict(big[0].headers)
    assert headers["clickscore.reason"] == b"oversized_payload"
    assert int(headers["clickscore.original-size"]) == len(oversized)
    assert headers["clickscore.original-sha256"].decode() == hashlib.sha256(oversized).hexdigest()
    assert big[0].value is not None and oversized.startswith(big[0].value)
    assert poisoned not in counts
    assert counts == dict(traffic.events_per_user)
    # `clickscore dlq replay` leaves what has no original to send: the tombstone, the cut copy.
    replay = await dlq.replay_dead_letters(settings, idle_s=1.0)
    assert replay.not_replayable == 2 and replay.replayed == len(dead) - 2
    result = await tally(settings, "null value, 2 MB message, poisoned message", counts)
    lost = sum(max(0, n - counts.get(u, 0)) for u, n in traffic.events_per_user.items())
    duplicated = sum(max(0, counts.get(u, 0) - n) for u, n in traffic.events_per_user.items())
    print_counts(
        "null value, oversized, poisoned",
        lost,
        duplicated,
        dead_letters=dict(reasons),
        truncated_copy_bytes=len(big[0].value),
        worker="alive",
    )
    assert (lost, duplicated, result.lost, result.duplicated) == (0, 0, 0, 0)


# --- 2. SIGKILL twice while heavy users burst --------------------------------------------------


async def test_sigkill_twice_during_heavy_bursts_counts_every_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    """Heavy users (bots, scrapers) send hundreds of events between two commits, far more
    than the 32 event ids a state remembers: only the applied offset keeps a re-read from
    counting them again. RocksDB, the production store: its files keep every state written
    before the kill, so each restart re-reads everything since the last commit."""
    # Small windows: the whole-batch delivery would otherwise score a chunk in one or two
    # windows, and a kill after them could land after their commit, leaving nothing to re-read.
    settings = worker_settings(
        settings, table_store="rocksdb://", run_dir=tmp_path, window_max_events=64
    )
    await prepare(settings)
    now_ms = int(time.time() * 1000)
    traffic = build_traffic(now_ms, users=150, events_per_user=6)
    heavy = [f"heavy-{n}" for n in range(4)]
    start = now_ms - 20 * 60_000
    bursts = [
        (user.encode(), event_to_json(Event(f"{user}-{i}", user, start + 200 * i, "view")))
        for i in range(600)
        for user in heavy
    ]
    for user in heavy:
        traffic.events_per_user[user] = 600
    # Heavy users' bursts spread through the whole stream, in their time order.
    merged: list[tuple[bytes | None, bytes]] = []
    pieces = 6
    for i in range(pieces):
        merged += traffic.records[
            i * len(traffic.records) // pieces : (i + 1) * len(traffic.records) // pieces
        ]
        merged += bursts[i * len(bursts) // pieces : (i + 1) * len(bursts) // pieces]
    traffic.records = merged
    third = len(merged) // 3
    chunks = [merged[:third], merged[third : 2 * third], merged[2 * third :]]
    log = tmp_path / "worker.log"
    produced = 0
    # Messages each restarted worker re-read and skipped by offset (its own metric, scraped
    # before it is killed or stopped): the kills must have left such re-reading to skip.
    re_read: list[int] = []
    for n in range(2):
        await produce(settings, settings.topic_events, chunks[n])
        produced += len(chunks[n])
        before = sum((await scored_event_counts(settings)).values())
        worker = WorkerProcess(settings, log).start()
        try:
            deadline = time.monotonic() + 90
            # Kill while the heavy users' events of this chunk are being scored.
            while sum((await scored_event_counts(settings)).values()) <= before + 500:
                assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
                await asyncio.sleep(0.05)
            if n:  # the first start had nothing to re-read
                scraped = await asyncio.to_thread(scrape_metrics, settings)
                re_read.append(int(metric(scraped, "clickscore_events_replayed_total")))
        finally:
            worker.kill()
        at_kill = await scored_event_counts(settings)
        expected_now = valid_counts(merged[:produced], now_ms)
        print(f"kill {n + 1}: {sum(at_kill.values())}/{sum(expected_now.values())} scored")

    await produce(settings, settings.topic_events, chunks[2])
    worker = WorkerProcess(settings, log).start()
    try:
        counts = await wait_until_scored(settings, traffic, worker, timeout_s=180)
        replayed = metric(
            await asyncio.to_thread(scrape_metrics, settings), "clickscore_events_replayed_total"
        )
    finally:
        worker.stop()

    expected = dict(traffic.events_per_user)
    lost = sum(max(0, n - counts.get(u, 0)) for u, n in expected.items())
    duplicated = sum(max(0, counts.get(u, 0) - n) for u, n in expected.items())
    print_counts(
        "SIGKILL x2 during heavy bursts",
        lost,
        duplicated,
        heavy_users={u: counts.get(u) for u in heavy},
        re_read_and_skipped_by_offset_after_the_last_kill=int(replayed),
        re_read_after_the_first_kill=re_read[0],
        worker="restarted",
    )
    # A kill must have left more re-reading than the event-id memory covers.
    re_read.append(int(replayed))
    assert max(re_read) > 32, f"re-read per restart {re_read}: the kills tested nothing"
    assert counts == expected
    result = await tally(settings, "SIGKILL x2 during heavy bursts", expected)
    assert (result.lost, result.duplicated) == (0, 0)


# --- 3. stack down / up: the broker comes back empty, the RocksDB files survive --------------


async def test_stale_local_state_after_stack_down_up_is_rebuilt(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(
        settings,
        table_store="rocksdb://",
        broker_url=f"kafka://127.0.0.1:{free_port()}",
        run_dir=tmp_path,
    )
    await asyncio.to_thread(local.start_broker, settings, 30.0)
    log = tmp_path / "worker.log"
    try:
        await prepare(settings)
        first = build_traffic(int(time.time() * 1000), users=40)
        await produce(settings, settings.topic_events, first.records)
        worker = WorkerProcess(settings, log).start()
        try:
            await wait_until_scored(settings, first, worker)
        finally:
            worker.stop()
        table_files = list((tmp_path / "worker-data").rglob(f"{TABLE_NAME}-*.db"))
        assert table_files, "the worker kept no RocksDB table files"

        # `clickscore stack down` / `up`: the in-memory broker starts empty.
        process.stop(settings.run_dir, broker.NAME)
        await asyncio.to_thread(local.start_broker, settings, 30.0)
        fresh = settings.model_copy(update={"database_url": settings.database_url + "_after"})
        await asyncio.to_thread(postgres.ensure_database, fresh)
        await prepare(fresh)
        # The same users again: a table still holding their old states would count both.
        second = build_traffic(int(time.time() * 1000), users=40)
        await produce(fresh, fresh.topic_events, second.records)
        worker = WorkerProcess(fresh, log).start()
        try:
            counts = await wait_until_scored(fresh, second, worker)
            assert worker.alive(), worker.log_tail()
        finally:
            worker.stop()
        text = log.read_text()
        assert "local table files are newer than the changelog" in text
        assert "ConsistencyError" not in text
        expected = dict(second.events_per_user)
        lost = sum(max(0, n - counts.get(u, 0)) for u, n in expected.items())
        duplicated = sum(max(0, counts.get(u, 0) - n) for u, n in expected.items())
        print_counts(
            "stack down/up", lost, duplicated, stale_state="detected and rebuilt", worker="started"
        )
        assert counts == expected
        result = await tally(fresh, "stack down/up", expected)
        assert (result.lost, result.duplicated) == (0, 0)
        await asyncio.to_thread(
            postgres.drop_database, fresh, postgres.url_of(fresh).database or ""
        )
    finally:
        process.stop(settings.run_dir, broker.NAME)


# --- 4. a model that fails every request, then SIGTERM while the worker retries ------------


def set_fail(settings: Settings, model: str, fail: bool) -> None:
    base = f"http://{settings.triton_http_url}/v2"
    with urllib.request.urlopen(f"{base}/models/{model}/config", timeout=10) as response:
        config = json.loads(response.read())
    config["parameters"] = {"fail": {"string_value": "true" if fail else "false"}}
    body = orjson.dumps({"parameters": {"config": json.dumps(config)}})
    request = urllib.request.Request(
        f"{base}/repository/models/{model}/load", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200


async def test_a_failing_model_makes_the_worker_unhealthy_and_sigterm_stops_it_losing_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(settings, triton_model=FAILING_RULES_MODEL, retry_max_backoff_s=0.5)
    await asyncio.to_thread(load_model, settings, FAILING_RULES_MODEL)
    await asyncio.to_thread(set_fail, settings, FAILING_RULES_MODEL, True)
    await prepare(settings)
    traffic = build_traffic(int(time.time() * 1000), users=60)
    await produce(settings, settings.topic_events, traffic.records)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    try:
        deadline = time.monotonic() + 90
        while True:  # the event: the worker reports itself unhealthy
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            try:
                status, report = await asyncio.to_thread(health, settings)
            except OSError:
                status, report = 0, {}
            if status == 503:
                break
            await asyncio.sleep(0.2)
        exposition = await asyncio.to_thread(scrape_metrics, settings)
        assert metric(exposition, "clickscore_healthy") == 0
        assert "failing on purpose" in json.dumps(report)
        committed_while_failing = await committed_total(settings)
        # SIGTERM while every request is being retried.
        stop_s = worker.terminate(timeout_s=30)
    finally:
        worker.stop()
    loud = [
        orjson.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"CRITICAL"' in line
    ]
    assert any("worker unhealthy" in entry["msg"] for entry in loud)
    assert committed_while_failing == 0
    assert await committed_total(settings) == 0, "offsets committed past unscored events"

    await asyncio.to_thread(set_fail, settings, FAILING_RULES_MODEL, False)
    worker = WorkerProcess(settings, log).start()
    try:
        counts = await wait_until_scored(settings, traffic, worker)
        status, _ = await asyncio.to_thread(health, settings)
    finally:
        worker.stop()
        await asyncio.to_thread(set_fail, settings, FAILING_RULES_MODEL, True)
    assert status == 200
    expected = dict(traffic.events_per_user)
    lost = sum(max(0, n - counts.get(u, 0)) for u, n in expected.items())
    duplicated = sum(max(0, counts.get(u, 0) - n) for u, n in expected.items())
    print_counts(
        "model failing every request; SIGTERM during retries",
        lost,
        duplicated,
        health=f"503 ({report})",
        committed_while_failing=committed_while_failing,
        seconds_from_SIGTERM_to_exit=round(stop_s, 1),
        worker="stopped by SIGTERM, restarted",
    )
    assert counts == expected
    result = await tally(settings, "failing model + SIGTERM during retries", expected)
    assert (result.lost, result.duplicated) == (0, 0)
