"""`clickscore demo`: the main job on embedded defaults, start to finish.

1. Starts the local stack (broker, Triton, database) and migrates the database. If the
   model repository serves no version yet, trains a small first model on synthetic data
   (44 s measured on two cores) before Triton starts.
2. Starts a real worker and the retention-actions consumer, as child processes.
3. Replays a synthetic clickstream with injected churners and anomalies into the broker (or
   a real dataset: `--dataset FORMAT PATH`), paced (`--rate`, events/s) so latencies mean
   something, under a live view.
4. Waits until every user is scored, then reports what happened (on synthetic data, against
   the ground truth), in the terminal and as an HTML report under reports/.
5. Served quality (quality.py): runs `clickscore outcomes` once and reports realised
   precision, recall and calibration, and the worker's drift gauges.
6. Stops everything it started (also on Ctrl-C).

Latency here runs from the moment the demo sends an event to the moment its score is in
Kafka, for event-triggered scores only; silent re-scores get their own figure, from when they
fell due (score_times.py). The worker's own histogram measures from the event's timestamp,
which for a replay of days of history compressed into seconds is days, not the pipeline's
delay.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from stream.console import StepBars
from stream.contract.events import Event
from stream.datasets.synthetic import SyntheticConfig, UserTruth, generate
from stream.db import migrate
from stream.demo import quality
from stream.demo.live import LiveView, Snapshot
from stream.demo.report import (
    BASE_RATE_TEXT,
    PRECISION_TEXT,
    RECALL_TEXT,
    FlaggedUser,
    PrecisionRecall,
    ReportData,
    ReportUnavailable,
    precision_recall,
    quantile,
    write_report,
)
from stream.demo.report_data import RunResults, read_results, served_model_evaluation
from stream.demo.score_times import ScoreTimes
from stream.ops.progress import wait_for_scores
from stream.ops.replay import ensure_topic, replay
from stream.scoring.alerts import ANOMALY, BURST, CHURN, TAKEOVER
from stream.settings import Settings
from stream.stack import local, postgres, process
from stream.stack.process import free_port, spawn_command

LATENCY_SOURCE = "from the demo sending the event to its event-triggered score in Kafka"
# Events/s offered by default: below half of the saturation measured with one worker on a
# shared two-core machine, the transformer on the CPU (BENCHMARKS.md, "Latency at offered
# rates, after the change", and "Demo": the demo's users have full sequences), so the live
# view shows the pipeline's latency, not a queue. `--rate` offers more.
DEFAULT_RATE = 400.0


@dataclass(frozen=True)
class DemoOptions:
    users: int = 300
    days: int = 7
    seed: int = 0
    keep_running: bool = False
    timeout_s: float = 300.0  # for scoring to finish, on top of the paced replay's own time
    rate: float = DEFAULT_RATE  # events/s; 0 sends as fast as possible
    report_root: Path = Path("reports")
    dataset: tuple[str, Path] | None = None  # (format, path): real data instead of synthetic
    max_events: int = 50_000  # of a dataset, the earliest this many
    first_model_users: int = 600  # synthetic users the first model trains on, if none serves


@dataclass
class _Run:
    """What the demo measured while the replay ran."""

    events: int
    users: int
    replay_s: float = 0.0
    scoring_s: float = 0.0
    times: ScoreTimes = field(default_factory=ScoreTimes)
    final: Snapshot | None = None


def _demo_settings(settings: Settings) -> Settings:
    """Topics of this run's own, a fresh demo database, and free ports for the worker's
    metrics (the live view reads them), the actions service's metrics and Faust's web
    server, so every demo starts clean.

    The table lives in memory, as in `clickscore bench`: a demo run is thrown away, and its
    state with it, and no persisted offset can disagree with a fresh changelog topic.
    """
    run = f"demo-{uuid.uuid4().hex[:6]}"
    url = postgres.url_of(settings)
    if not postgres.is_sqlite(settings):
        url = url.set(database=f"{url.database}_demo")
    demo = settings.for_run(
        run,
        database_url=url.render_as_string(hide_password=False),
        metrics_port=free_port(settings.metrics_host),
        actions_metrics_port=free_port(settings.metrics_host),
        worker_web_port=free_port(),
        table_store="memory://",
    )
    if not postgres.is_sqlite(demo):
        postgres.drop_database(demo, str(url.database))
        postgres.ensure_database(demo)
    migrate.upgrade(demo)
    # Created before the worker subscribes, so it joins once instead of rebalancing when the
    # replay creates the topic.
    asyncio.run(ensure_topic(demo, demo.topic_events))
    return demo


def _has_model(settings: Settings) -> bool:
    """Whether the repository holds a numbered version folder of the served model."""
    folder = settings.model_repo / settings.triton_model
    return folder.is_dir() and any(v.is_dir() and v.name.isdigit() for v in folder.iterdir())


def _train_first_model(settings: Settings, options: DemoOptions, bars: StepBars) -> None:
    """Train version 1 through `clickscore train`'s pipeline (trainer/pipeline.py): nothing
    serves, so each task's verdict is "new" and only the value floors can refuse it. Triton
    is not up yet: it loads the new version when it starts."""
    from trainer.history import Source
    from trainer.pipeline import TrainArgs, run

    # The small networks (a minute or two on two cores); `clickscore train` builds the full ones.
    source = Source(users=options.first_model_users, days=14, seed=options.seed)
    with bars.step("first model: the training pipeline"):
        result = run(settings, TrainArgs(source=source, tiny=True))
    if not result.promoted:
        raise SystemExit(f"the first model was not served: {result.reason}")


def _start_stack(settings: Settings, options: DemoOptions) -> None:
    with StepBars() as bars:
        with bars.step("database (migrated)"):
            local.start_database(settings, migrate=True)
        if not _has_model(settings):
            with bars.step("first model (none served)"):
                _train_first_model(settings, options, bars)
        with bars.step("broker (tansu)"):
            local.start_broker(settings, timeout_s=60.0)
        with bars.step("tritonserver"):
            local.start_triton(settings, timeout_s=120.0)
    for status in local.status(settings):
        print(f"  {'ok  ' if status.healthy else 'DOWN'}  {status.name:<9} {status.detail}")


def run_demo(settings: Settings, options: DemoOptions) -> int:
    print("starting the local stack (database, broker, Triton) ...")
    _start_stack(settings, options)
    demo = _demo_settings(settings)
    started: list[str] = []
    try:
        for command in ("worker", "actions"):
            started.append(spawn_command(demo, command, name=f"demo-{command}").name)
        print(f"worker and retention-actions consumer started (logs in {settings.run_dir})")
        return asyncio.run(_replay_and_report(demo, options))
    finally:
        for name in started:
            process.stop(settings.run_dir, name)
        if not options.keep_running:
            print(f"stopped: {', '.join(local.down(settings)) or 'nothing'}")


def _clickstream(options: DemoOptions) -> tuple[list[Event], dict[str, UserTruth] | None, str]:
    """The events to replay, the ground truth when there is one, and what they are."""
    if options.dataset is None:
        config = SyntheticConfig(users=options.users, days=options.days, seed=options.seed)
        events, truth = generate(config)
        return events, truth, f"{options.users} synthetic users, {options.days} days"
    from stream.datasets.loaders import load, sort_by_time

    format, path = options.dataset
    events = sort_by_time(load(format, path))[: options.max_events]
    return events, None, f"{format} {path.name}"


async def _replay_and_report(settings: Settings, options: DemoOptions) -> int:
    events, truth, source = _clickstream(options)
    expected = Counter(e.user_id for e in events)
    pace = f"{options.rate:,.0f} events/s" if options.rate > 0 else "full speed"
    print(f"replaying {len(events):,} events of {len(expected)} users ({source}) at {pace} ...")
    worker = process.load(settings.run_dir, "demo-worker")

    def alive() -> bool:
        return worker is not None and process.is_alive(worker)

    run = await _replay_live(settings, options, events, expected, alive)
    await quality.wait_stored(settings, expected, alive)
    results = await read_results(settings)
    accuracy = _accuracy(results, truth) if truth is not None else []
    flagged = _with_truth(results.flagged, truth)
    _print_summary(run, results, accuracy)
    note = _capacity_note(run, options)
    if note:
        print(f"\nnote: {note}")
    served = await _served_quality(settings)
    print("\nserved quality (realised outcomes of the alerts a horizon before the end; drift):")
    print("\n".join(quality.summary_lines(served)))
    try:
        path = _write_report(settings, options, source, run, results, accuracy, flagged, served)
        print(f"\nreport: {path.resolve()}")
    except ReportUnavailable as exc:
        print(f"\nno HTML report: {exc}")
    return 0


async def _replay_live(
    settings: Settings,
    options: DemoOptions,
    events: Sequence[Event],
    expected: Counter[str],
    alive: Callable[[], bool],
) -> _Run:
    run = _Run(events=len(events), users=len(expected))
    scored: set[str] = set()
    async with LiveView(settings, Console()) as view:
        view.progress("replay", 0, len(events))
        view.progress("scored", 0, len(expected))
        await view.wait_for_worker(120.0, alive)

        def on_batch(batch: Sequence[Event]) -> None:
            run.times.sent(batch, time.time_ns() // 1_000_000)
            view.progress("replay", len(run.times.sent_ms), len(events))

        def on_score(score: dict[str, object]) -> None:
            latency = run.times.observe(score)  # None for a silent re-score
            if latency is not None:
                view.observe_latency(latency)
            user = str(score["user_id"])
            count = score["event_count"]
            if user in expected and isinstance(count, int) and count >= expected[user]:
                scored.add(user)
                view.progress("scored", len(scored), len(expected))

        started = time.monotonic()
        replaying = asyncio.create_task(
            replay(settings, events, rate=options.rate, shift_to_now=True, on_batch=on_batch)
        )
        paced_s = len(events) / options.rate if options.rate > 0 else 0.0
        try:
            _, last = await wait_for_scores(
                settings,
                expected,
                alive=alive,
                timeout_s=options.timeout_s + paced_s,
                on_score=on_score,
            )
            stats = await replaying
        finally:
            if not replaying.done():
                replaying.cancel()
        run.replay_s = stats.seconds
        run.scoring_s = last - started
        run.final = view.snapshot()
    return run


async def _served_quality(settings: Settings) -> quality.ServedQuality:
    """Drift of the replayed traffic, and the realised outcomes its data decides."""
    try:
        psi = quality.read_psi(settings)
    except OSError:
        psi = []
    return await quality.served_quality(settings, psi)


def _accuracy(results: RunResults, truth: dict[str, UserTruth]) -> list[PrecisionRecall]:
    """Each alert kind against the users it exists for, with the base rate to beat."""
    by_kind: dict[str, set[str]] = {}
    for user, kind, _ in results.alerts:
        by_kind.setdefault(kind, set()).add(user)
    churners = {u for u, t in truth.items() if t.persona == "churner"}
    anomalous = {u for u, t in truth.items() if t.anomaly is not None}
    takeovers = {u for u, t in truth.items() if t.anomaly == "takeover"}
    flagged = set().union(*(by_kind.get(kind, set()) for kind in (ANOMALY, BURST, TAKEOVER)))
    users = len(truth)
    return [
        precision_recall("churn alerts vs churners", by_kind.get(CHURN, set()), churners, users),
        precision_recall(
            "anomaly alerts vs anomalies", by_kind.get(ANOMALY, set()), anomalous, users
        ),
        precision_recall("burst alerts vs anomalies", by_kind.get(BURST, set()), anomalous, users),
        precision_recall(
            "takeover alerts vs anomalies", by_kind.get(TAKEOVER, set()), anomalous, users
        ),
        precision_recall(
            "takeover alerts vs takeovers", by_kind.get(TAKEOVER, set()), takeovers, users
        ),
        precision_recall("anomaly+burst+takeover vs anomalies", flagged, anomalous, users),
    ]


def _with_truth(
    flagged: Sequence[FlaggedUser], truth: dict[str, UserTruth] | None
) -> list[FlaggedUser]:
    if truth is None:
        return list(flagged)
    out = []
    for f in flagged:
        known = truth.get(f.user_id)
        really = "unknown" if known is None else (known.anomaly or known.persona)
        out.append(replace(f, truth=really))
    return out


def _capacity_note(run: _Run, options: DemoOptions) -> str | None:
    """When events were offered faster than the worker scored them, latencies include the
    time they waited in the backlog: say so, or they read as the pipeline's own."""
    if options.rate <= 0 or not run.scoring_s:
        return None
    sustained = run.events / run.scoring_s
    if sustained >= 0.9 * options.rate:
        return None
    return (
        f"The replay offered {options.rate:,.0f} events/s, above the {sustained:,.0f} events/s "
        "this machine sustained end to end: events queued, so the latencies include "
        "time in the backlog. Rerun with a lower --rate for the pipeline's own latency."
    )


def _latency_text(latencies: Sequence[float]) -> str:
    if not latencies:
        return "not measured"
    p50, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
    return f"p50 {_seconds(p50)}, p99 {_seconds(p99)}, max {_seconds(max(latencies))}"


def _silent_text(delays: Sequence[float], still_due: float | None) -> str:
    """Silent re-scores: how many, how long after they fell due, how many the worker still
    owes (its gauge at the end of the run)."""
    due = "-" if still_due is None or math.isnan(still_due) else f"{still_due:,.0f}"
    if not delays:
        return f"0, still due {due}"
    p50, p99 = quantile(delays, 0.5), quantile(delays, 0.99)
    return (
        f"{len(delays):,}, due-to-emitted p50 {_seconds(p50)}, p99 {_seconds(p99)}, still due {due}"
    )


def _seconds(value: float) -> str:
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.1f} s"


def _facts(run: _Run, results: RunResults) -> list[tuple[str, str]]:
    kinds = Counter(kind for _, kind, _ in results.alerts)
    final = run.final
    times = run.times
    return [
        ("events replayed", f"{run.events:,} of {run.users} users in {run.replay_s:.1f} s"),
        ("all users scored after", f"{run.scoring_s:.1f} s"),
        (
            "scores emitted",
            f"{len(times.event_s):,} event-triggered, "
            f"{len(times.silent_delay_s):,} silent re-scores",
        ),
        ("event-triggered score latency", _latency_text(times.event_s)),
        (
            "silent re-scores",
            _silent_text(times.silent_delay_s, final.silent_due if final else None),
        ),
        ("dead letters", str(final.dead_letters if final else 0)),
        ("users with a score in PostgreSQL", str(len(results.scores["churn_risk"]))),
        (
            "alerts",
            f"{len(results.alerts)} ("
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            + ")",
        ),
        ("retention actions recorded", str(results.retention_actions)),
    ]


def _print_summary(run: _Run, results: RunResults, accuracy: Sequence[PrecisionRecall]) -> None:
    print()
    for label, value in _facts(run, results):
        print(f"{label + ':':<34} {value}")
    if not accuracy:
        print("\nreal data: no ground truth to score the alerts against")
        return
    print("\nalerts against the injected ground truth:")
    print(f"  {PRECISION_TEXT}\n  {RECALL_TEXT}\n  {BASE_RATE_TEXT}")
    for row in accuracy:
        print(
            f"  {row.label:<36} precision {_ratio(row.precision)}  recall {_ratio(row.recall)}"
            f"  base rate {_ratio(row.base_rate)}  ({row.flagged} flagged, {row.actual} true)"
        )


def _ratio(value: float | None) -> str:
    return " n/a" if value is None else f"{value:4.2f}"


def _write_report(
    settings: Settings,
    options: DemoOptions,
    source: str,
    run: _Run,
    results: RunResults,
    accuracy: Sequence[PrecisionRecall],
    flagged: Sequence[FlaggedUser],
    served: quality.ServedQuality,
) -> Path:
    now = datetime.now(UTC)
    notes = []
    note = _capacity_note(run, options)
    if note:
        notes.append(note)
    if options.rate <= 0:
        notes.append(
            "The replay was not paced (--rate 0): latencies include the time events waited "
            "in the backlog."
        )
    data = ReportData(
        title=f"clickscore demo · {source}",
        generated_at=now,
        facts=_facts(run, results),
        scores=results.scores,
        alerts=[(at, kind) for _, kind, at in results.alerts],
        latencies_s=run.times.event_s,
        latency_source=LATENCY_SOURCE,
        accuracy=accuracy,
        model=served_model_evaluation(settings.model_repo, settings.triton_model),
        notes=notes,
        flagged=flagged,
        served_quality=quality.quality_section(served),
    )
    return write_report(data, options.report_root / f"demo-{now:%Y%m%d-%H%M%S}")
