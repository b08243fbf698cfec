"""`clickscore outcomes [--every 15m]`: close what only time decides, compute the daily
realised figures per model version, and serve them to Prometheus.

The worker records what events decide (a churn-alerted user's first event after the alert,
purchases after a prediction: stream/scoring/outcomes.py). Silence decides the rest, and
silence sends no event: each run here

1. takes as now the newest event time scored (user_scores), so a replay or the demo's
   fast-forwarded days close alerts as a live stream would, and a stopped stream closes
   nothing it cannot know;
2. closes the churn alerts a horizon old whose user has not come back: `stayed_away`;
3. recomputes churn_quality_daily and purchase_calibration_daily (stream/ops/outcome_sql.py);
4. sets the gauges (stream/ops/outcome_metrics.py) from them, over the `outcomes_window_days`
   before the last day whose outcomes are all decided, with each served version's validation
   precision from its reference.json.

Run once (the demo does, at its end) or every interval (compose, `--every 15m`), PostgreSQL
only. Every step is idempotent: a run repeated, or two at once, write the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from stream.contract.drift import REFERENCE_FILE, Reference
from stream.ops import outcome_metrics as gauges
from stream.ops import outcome_sql as sql
from stream.settings import OutcomesSettings

log = logging.getLogger(__name__)
GROUPS = {False: "untreated", True: "treated"}


@dataclass
class Run:
    """What one run found (also what it printed)."""

    now: datetime | None = None
    closed: int = 0
    churn: list[dict[str, Any]] = field(default_factory=list)  # per version and group
    calibration: list[dict[str, Any]] = field(default_factory=list)  # per version and decile

    def summary(self) -> str:
        if self.now is None:
            return "outcomes: no scores yet, nothing to decide"
        lines = [f"outcomes at event time {self.now:%Y-%m-%d %H:%M}: closed {self.closed} alerts"]
        for row in self.churn:
            precision = _ratio(row["stayed_away"], row["known"])
            lines.append(
                f"  v{row['model_version']} {GROUPS[row['treated']]}: precision "
                f"{precision:.2f} of {row['known']} known; {row['caught']} of "
                f"{row['churners']} who stopped were alerted"
            )
        return "\n".join(lines)


def _ratio(part: Any, whole: Any) -> float:
    return float(part) / float(whole) if whole else math.nan


def _window(settings: OutcomesSettings, now: datetime, horizon_s: int) -> dict[str, Any]:
    until = (now - timedelta(seconds=horizon_s)).date()
    return {"since": until - timedelta(days=settings.outcomes_window_days), "until": until}


async def run_once(settings: OutcomesSettings) -> Run:
    engine = create_async_engine(settings.database_url, hide_parameters=True)
    run = Run()
    try:
        async with engine.begin() as conn:
            # One run at a time: a second waits instead of recomputing the same tables.
            await conn.execute(text("SELECT pg_advisory_xact_lock(5005)"))
            run.now = (await conn.execute(sql.CLOCK)).scalar()
            if run.now is None:
                return run
            params = {
                "now": run.now,
                "churn_horizon": timedelta(seconds=settings.churn_horizon_s),
                "purchase_horizon": timedelta(seconds=settings.purchase_horizon_s),
            }
            run.closed = (await conn.execute(sql.CLOSE_CHURN, params)).rowcount
            await conn.execute(text("DELETE FROM churn_quality_daily"))
            await conn.execute(sql.CHURN_DAILY, params)
            await conn.execute(text("DELETE FROM purchase_calibration_daily"))
            await conn.execute(sql.PURCHASE_DAILY, params)
            await _read_gauges(conn, settings, run)
    finally:
        await engine.dispose()
    return run


async def _read_gauges(conn: AsyncConnection, settings: OutcomesSettings, run: Run) -> None:
    assert run.now is not None
    churn = await conn.execute(
        sql.CHURN_WINDOW, _window(settings, run.now, settings.churn_horizon_s)
    )
    run.churn = [dict(r._mapping) for r in churn]
    calibration = await conn.execute(
        sql.CALIBRATION_WINDOW, _window(settings, run.now, settings.purchase_horizon_s)
    )
    run.calibration = [dict(r._mapping) for r in calibration]
    last = (await conn.execute(sql.LAST_RECORDED)).scalar()
    for gauge in gauges.LABELLED:
        gauge.clear()
    for row in run.churn:
        version, group = row["model_version"], GROUPS[row["treated"]]
        gauges.CHURN_KNOWN.labels(version, group).set(row["known"])
        if row["known"] >= settings.outcomes_min_known:
            gauges.CHURN_PRECISION.labels(version, group).set(
                _ratio(row["stayed_away"], row["known"])
            )
    # Recall counts both groups: a churner whose alert was treated still stopped (one the
    # action saved is no churner), and never-alerted churners are untreated by definition.
    stopped: dict[str, list[int]] = {}
    for row in run.churn:
        caught, churners = stopped.setdefault(row["model_version"], [0, 0])
        stopped[row["model_version"]] = [caught + row["caught"], churners + row["churners"]]
    for version, (caught, churners) in stopped.items():
        if churners >= settings.outcomes_min_known:
            gauges.CHURN_RECALL.labels(version).set(_ratio(caught, churners))
    for version in {row["model_version"] for row in run.churn}:
        promise = _reference(settings, version)
        if promise is not None and promise.churn is not None:
            gauges.VALIDATION_PRECISION.labels(version).set(promise.churn.precision)
            gauges.VALIDATION_INTERVAL.labels(version).set(promise.churn.interval)
    for row in run.calibration:
        labels = (row["model_version"], str(row["decile"]))
        gauges.PURCHASE_PREDICTIONS.labels(*labels).set(row["predictions"])
        gauges.PURCHASE_RATE.labels(*labels).set(_ratio(row["purchases"], row["predictions"]))
        gauges.PURCHASE_SCORE.labels(*labels).set(row["mean_score"])
    gauges.LAST_RECORDED.set(float(last or 0))
    gauges.EVENT_TIME.set(run.now.timestamp())


def _reference(settings: OutcomesSettings, version: str) -> Reference | None:
    path = settings.model_repo / settings.triton_model / version / REFERENCE_FILE
    try:
        return Reference.from_dict(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.error("unreadable reference %s: %s", path, exc)
        return None


async def run_outcomes(
    settings: OutcomesSettings, every_s: int | None, stop: asyncio.Event
) -> None:
    while True:
        started = time.monotonic()
        try:
            run = await run_once(settings)
        except Exception:
            if every_s is None:
                raise
            log.exception("outcomes run failed; trying again in %d s", every_s)
        else:
            gauges.RUNS.inc()
            gauges.LAST_RUN.set(datetime.now(UTC).timestamp())
            print(run.summary(), flush=True)
        if every_s is None:
            return
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, every_s - (time.monotonic() - started)))
            return
        except TimeoutError:
            continue


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from trainer.cli import duration_s

    outcomes = subparsers.add_parser(
        "outcomes",
        help="close churn alert and purchase outcomes, compute the realised figures per "
        "version and day, serve them to Prometheus",
    )
    outcomes.add_argument(
        "--every", type=duration_s, help="keep running, e.g. 15m (and serve /metrics)"
    )
    outcomes.set_defaults(handler=run_command)


def run_command(settings: OutcomesSettings, args: argparse.Namespace) -> int:
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_outcomes(settings, args.every, stop)

    if args.every is not None:
        gauges.serve(settings)
    asyncio.run(main())
    return 0
