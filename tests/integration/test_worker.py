"""The worker end to end, as a real process against the real broker, Triton and Postgres."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from stream.settings import Settings
from stream.stack import local, process, triton
from stream.stack.process import free_port
from tests.support.checks import (
    alert_rows,
    committed_total,
    expected_alerts,
    metric,
    prepare,
    scored_event_counts,
    scrape_metrics,
    tally,
    wait_for_metric,
    wait_until_scored,
    worker_settings,
)
from tests.support.kafka import produce, read_all
from tests.support.traffic import build_traffic
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


async def test_worker_scores_alerts_and_dead_letters(settings: Settings, tmp_path: Path) -> None:
    # The production table store here; the restart test below restores from the changelog.
    settings = worker_settings(settings, table_store="rocksdb://")
    await prepare(settings)
    traffic = build_traffic(now_ms=int(time.time() * 1000))
    await produce(settings, settings.topic_events, traffic.records)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        counts = await wait_until_scored(settings, traffic, worker)
        # The table rows can land before the window's Kafka results, and the counters
        # move once both sinks have taken them: give the last window that moment.
        deadline = time.monotonic() + 10
        while True:
            exposition = await asyncio.to_thread(scrape_metrics, settings)
            emitted = metric(exposition, "clickscore_scores_emitted_total")
            if emitted >= len(traffic.users) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        worker.stop()

    # The metrics endpoint counts what happened.
    assert metric(exposition, "clickscore_events_consumed_total") == len(traffic.records)
    assert metric(exposition, "clickscore_events_duplicate_total") == 50
    assert metric(exposition, 'clickscore_dead_letters_total{reason="key_mismatch"}') == 1
    assert metric(exposition, 'clickscore_alerts_total{kind="burst"}') == 1
    assert metric(exposition, "clickscore_scores_emitted_total") >= len(traffic.users)

    # Every valid user has a score in Postgres (each reflecting every distinct event once:
    # the 50 resent duplicates did not count twice) and in Kafka.
    assert counts == dict(traffic.events_per_user)
    scores = await read_all(settings, settings.topic_scores)
    assert {orjson.loads(r.value)["user_id"] for r in scores} == traffic.users

    # The expected alerts, exactly once, and no others.
    rows = await alert_rows(settings)
    assert Counter((user, kind) for _, user, kind in rows) == expected_alerts(traffic)
    kafka_alerts = [orjson.loads(r.value) for r in await read_all(settings, settings.topic_alerts)]
    assert sorted(a["alert_id"] for a in kafka_alerts) == sorted(a for a, _, _ in rows)

    # Each malformed event sits in the dead-letter topic with its reason and original bytes.
    dead = await read_all(settings, settings.topic_dead_letter, until=len(traffic.bad))
    reasons = {r.value: dict(r.headers)["clickscore.reason"].decode() for r in dead}
    assert reasons == traffic.bad
    for record in dead:
        headers = dict(record.headers)
        assert headers["clickscore.source.topic"] == settings.topic_events.encode()
        assert int(headers["clickscore.source.offset"]) >= 0

    # Each rejection is logged as a JSON line with its origin and reason, never its payload.
    logged = [
        orjson.loads(line)
        for line in worker.log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    rejected = [e for e in logged if e["msg"] == "event rejected to the dead-letter topic"]
    assert sorted(e["reason"] for e in rejected) == sorted(traffic.bad.values())
    assert all({"topic", "partition", "offset"} <= e.keys() for e in rejected)
    assert "a" * 100 not in worker.log_path.read_text()


async def test_restart_restores_the_table_and_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(settings)
    await prepare(settings)
    traffic = build_traffic(now_ms=int(time.time() * 1000), users=200)
    half = len(traffic.records) // 2
    await produce(settings, settings.topic_events, traffic.records[:half])

    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, log).start()
    try:
        deadline = time.monotonic() + 90
        while not await scored_event_counts(settings):
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.3)  # a few windows in: some offsets committed, some not
    finally:
        worker.kill()  # SIGKILL mid-stream: no final commit, no clean shutdown

    await produce(settings, settings.topic_events, traffic.records[half:])
    worker = WorkerProcess(settings, log).start()
    try:
        counts = await wait_until_scored(settings, traffic, worker)
    finally:
        worker.stop()

    # Exact counts: a table lost on restart would count fewer events, a replay applied
    # twice would count more.
    assert counts == dict(traffic.events_per_user)
    rows = await alert_rows(settings)
    assert Counter((user, kind) for _, user, kind in rows) == expected_alerts(traffic)


async def test_triton_outage_pauses_scoring_without_committing_past_it(
    settings: Settings, tmp_path: Path
) -> None:
    # A tritonserver of this test's own, serving the rules model, so it can be stopped.
    settings = worker_settings(settings).model_copy(
        update={
            "triton_http_url": f"127.0.0.1:{free_port()}",
            "triton_grpc_url": f"127.0.0.1:{free_port()}",
            "triton_metrics_port": free_port(),
            "run_dir": tmp_path,
            "retry_max_backoff_s": 0.5,
        }
    )
    await prepare(settings)
    await asyncio.to_thread(local.start_triton, settings, 60.0)
    traffic = build_traffic(now_ms=int(time.time() * 1000), users=60)
    half = len(traffic.records) // 2
    first, second = traffic.records[:half], traffic.records[half:]
    await produce(settings, settings.topic_events, first)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        first_users = Counter(k.decode() for k, _ in first if k and k != b"mallory")
        deadline = time.monotonic() + 90
        while sum((await scored_event_counts(settings)).values()) < 1:
            assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.3)

        await asyncio.to_thread(process.stop, settings.run_dir, triton.NAME)
        outage_started = time.monotonic()
        await produce(settings, settings.topic_events, second)
        # The event: the worker has failed against the stopped Triton over and over (24
        # retries at least 0.25 s apart once backed off: more than two commit intervals, and
        # long enough for gRPC's own reconnect backoff to have grown).
        retries = await wait_for_metric(
            settings, worker, 'clickscore_retries_total{target="triton infer"}', at_least=24
        )
        assert worker.alive(), worker.log_tail()
        stalled = await scored_event_counts(settings)
        # Nothing of the second half is scored, and no offset past it is committed.
        assert sum(stalled.values()) <= sum(first_users.values())
        committed = await committed_total(settings)
        assert committed <= len(first)

        await asyncio.to_thread(local.start_triton, settings, 60.0)
        ready = time.monotonic()
        # The event: the first score after Triton answers again.
        while sum((await scored_event_counts(settings)).values()) <= sum(stalled.values()):
            assert worker.alive() and time.monotonic() < ready + 60, worker.log_tail()
            await asyncio.sleep(0.05)
        resumed_s = time.monotonic() - ready
        counts = await wait_until_scored(settings, traffic, worker)
    finally:
        worker.stop()
        process.stop(settings.run_dir, triton.NAME)
    print(
        f"\n[Triton outage] down {ready - outage_started:.1f} s, {retries:.0f} retried requests, "
        f"committed {committed} <= {len(first)} produced before it; scoring resumed "
        f"{resumed_s:.2f} s after Triton was ready (target 2 s; polled every 0.05 s)"
    )
    assert counts == dict(traffic.events_per_user)
    result = await tally(settings, "Triton outage", dict(traffic.events_per_user))
    assert (result.lost, result.duplicated) == (0, 0)


async def test_batch_messages_score_their_events_and_dead_letter_the_bad_ones_by_index(
    settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings(settings)
    await prepare(settings)
    now_ms = int(time.time() * 1000)

    def event(user: str, n: int) -> dict[str, object]:
        return {
            "event_id": f"{user}-{n}",
            "user_id": user,
            "ts": now_ms - 60_000 + n,
            "event_type": "view",
        }

    # Per user: one batch of five events, its third unusable; then one plain event.
    users = [f"batch-user-{u}" for u in range(20)]
    records: list[tuple[bytes | None, bytes]] = []
    for user in users:
        batch = [event(user, n) for n in range(5)]
        batch[2] = {**batch[2], "ts": "not a time"}
        records.append((user.encode(), orjson.dumps(batch)))
        records.append((user.encode(), orjson.dumps(event(user, 5))))
    records.append((b"batch-user-0", b"[]"))
    await produce(settings, settings.topic_events, records)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        counts = await wait_until_scored(settings, {user: 5 for user in users}, worker)
    finally:
        worker.stop()

    assert counts == {user: 5 for user in users}
    dead = await read_all(settings, settings.topic_dead_letter, until=len(users) + 1)
    headers = [dict(r.headers) for r in dead]
    by_index = sorted(
        (h["clickscore.reason"].decode(), h.get("clickscore.batch.index")) for h in headers
    )
    assert by_index == [("bad_timestamp", b"2")] * len(users) + [("empty_batch", None)]
    assert {r.value for r in dead} == {v for _, v in records if v.startswith(b"[")}


async def test_a_second_worker_joining_mid_stream_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    # Whole fetched batches cross a rebalance: batches fetched before it are dropped and
    # read again from the committed offsets; nothing may be skipped or applied twice.
    first_settings = worker_settings(settings, window_max_events=64)
    second_settings = worker_settings(settings, window_max_events=64)
    await prepare(first_settings)
    traffic = build_traffic(now_ms=int(time.time() * 1000), users=300)
    half = len(traffic.records) // 2
    await produce(first_settings, first_settings.topic_events, traffic.records[:half])

    first = WorkerProcess(first_settings, tmp_path / "first.log").start()
    second = WorkerProcess(second_settings, tmp_path / "second.log")
    try:
        deadline = time.monotonic() + 90
        while not await scored_event_counts(first_settings):
            assert first.alive() and time.monotonic() < deadline, first.log_tail()
            await asyncio.sleep(0.1)
        second.start()  # joins while the first works through its backlog
        await produce(first_settings, first_settings.topic_events, traffic.records[half:])
        second.wait_ready()
        counts = await wait_until_scored(first_settings, traffic, first, timeout_s=180)
        assert second.alive(), second.log_tail()
    finally:
        first.stop()
        second.stop()

    assert counts == dict(traffic.events_per_user)
    rows = await alert_rows(first_settings)
    assert Counter((user, kind) for _, user, kind in rows) == expected_alerts(traffic)
    for worker in (first, second):
        assert "window failed" not in worker.log_path.read_text()
