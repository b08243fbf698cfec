"""The demo's "served quality": what the served version's alerts and scores turned out to be
worth, as an operator sees it (docs/monitoring.md), and how far the replayed traffic drifted
from the version's reference.

The demo replays its clickstream ending two churn horizons before now (stream/demo/run.py),
then fast-forwards event time: tick events of users of their own, at every partition, one
horizon before now and then now. The first moves event time past the replay by a horizon, so
the worker re-scores every quiet user at the silence levels passed and raises the churn
alerts silence earns; the second moves it a horizon past those alerts. `clickscore
outcomes` (run once, in-process) then decides every alert raised up to a horizon before now,
as it would on a live stream days later. PSI is read from the worker's /metrics before the
ticks: it describes the replayed traffic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.contract.drift import SIGNIFICANT, STABLE
from stream.contract.events import Event
from stream.demo.report import _e, _table
from stream.ops import outcomes
from stream.ops.progress import wait_for_scores
from stream.ops.replay import replay
from stream.ops.scrape import fetch_text, metrics_url
from stream.settings import Settings

TICK_USERS = 64  # enough to land on every partition (4 by default; 12 in compose)
TICK_PREFIX = "~clock-"


@dataclass(frozen=True)
class Psi:
    version: str
    kind: str  # score | feature
    name: str
    value: float


@dataclass
class ServedQuality:
    churn: list[dict[str, Any]] = field(default_factory=list)  # per version and group
    calibration: list[dict[str, Any]] = field(default_factory=list)  # per version and decile
    promised: dict[str, tuple[float, float]] = field(default_factory=dict)  # precision, +-
    psi: list[Psi] = field(default_factory=list)
    event_time: datetime | None = None
    notes: list[str] = field(default_factory=list)


def read_psi(settings: Settings) -> list[Psi]:
    """The worker's PSI gauges now (empty when its window holds too few values)."""
    found = []
    for family in text_string_to_metric_families(fetch_text(metrics_url(settings))):
        if family.name not in ("clickscore_score_psi", "clickscore_feature_psi"):
            continue
        kind = "score" if family.name == "clickscore_score_psi" else "feature"
        for sample in family.samples:
            name = sample.labels.get("score") or sample.labels.get("feature", "")
            found.append(Psi(sample.labels["version"], kind, name, float(sample.value)))
    return found


async def fast_forward(settings: Settings, alive: Callable[[], bool]) -> None:
    """Tick events a horizon before now and now, each round scored before the next."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    horizon_ms = settings.churn_horizon_s * 1000
    for n, at_ms in enumerate((now_ms - horizon_ms, now_ms)):
        ticks = [
            Event(f"{TICK_PREFIX}{u}-{n}", f"{TICK_PREFIX}{u}", at_ms - u, "view")
            for u in range(TICK_USERS)
        ]
        await replay(settings, ticks, rate=0, shift_to_now=False)
        # The users the ticks move past a silence level are re-scored in the ticks' windows,
        # and written to PostgreSQL in the same transaction as the ticks' own scores.
        expected = {f"{TICK_PREFIX}{u}": n + 1 for u in range(TICK_USERS)}
        await wait_for_scores(settings, expected, alive=alive, timeout_s=120.0)
        await _stored(settings, n + 1, alive)


async def _stored(settings: Settings, events: int, alive: Callable[[], bool]) -> None:
    """Until every tick user's PostgreSQL row holds `events` events (the scores topic may
    have them first: the worker writes Kafka and PostgreSQL together)."""
    engine = create_async_engine(settings.database_url)
    deadline = time.monotonic() + 60.0
    try:
        while True:
            async with engine.connect() as conn:
                done = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM user_scores "
                            "WHERE starts_with(user_id, :prefix) AND event_count >= :events"
                        ),
                        {"prefix": TICK_PREFIX, "events": events},
                    )
                ).scalar()
            if done == TICK_USERS:
                return
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{done} of {TICK_USERS} tick users stored; see the worker log")
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


async def served_quality(settings: Settings, psi: list[Psi]) -> ServedQuality:
    """Run the outcomes job once and read what it decided, all days."""
    run = await outcomes.run_once(settings)
    quality = ServedQuality(psi=psi, event_time=run.now)
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            churn = await conn.execute(
                text(
                    "SELECT model_version, treated, sum(alerts) AS alerts, sum(known) AS known, "
                    "sum(stayed_away) AS stayed_away, sum(returned) AS returned, "
                    "sum(churners) AS churners, sum(caught) AS caught "
                    "FROM churn_quality_daily GROUP BY 1, 2 ORDER BY 1, 2"
                )
            )
            quality.churn = [dict(r._mapping) for r in churn]
            calibration = await conn.execute(
                text(
                    "SELECT model_version, decile, sum(predictions) AS predictions, "
                    "sum(purchases) AS purchases, "
                    "sum(mean_score * predictions) / sum(predictions) AS mean_score "
                    "FROM purchase_calibration_daily WHERE NOT treated GROUP BY 1, 2 "
                    "ORDER BY 1, 2"
                )
            )
            quality.calibration = [dict(r._mapping) for r in calibration]
    finally:
        await engine.dispose()
    for version in {str(r["model_version"]) for r in quality.churn}:
        reference = outcomes._reference(settings, version)
        if reference is not None and reference.churn is not None:
            quality.promised[version] = (reference.churn.precision, reference.churn.interval)
    return quality


def recall(quality: ServedQuality) -> dict[str, tuple[int, int]]:
    """Per version: (caught, churners), both groups together: a churner whose alert was
    treated still stopped, and one the action saved is no churner at all."""
    out: dict[str, tuple[int, int]] = {}
    for row in quality.churn:
        caught, churners = out.get(str(row["model_version"]), (0, 0))
        out[str(row["model_version"])] = (caught + row["caught"], churners + row["churners"])
    return out


def _share(part: Any, whole: Any) -> str:
    return "n/a" if not whole else f"{float(part) / float(whole):.2f}"


def _psi_text(value: float) -> str:
    verdict = "stable" if value < STABLE else "moderate" if value <= SIGNIFICANT else "significant"
    return f"{value:.3f} ({verdict})"


def summary_lines(quality: ServedQuality) -> list[str]:
    """The terminal's served-quality lines."""
    lines = []
    for row in quality.churn:
        group = "treated" if row["treated"] else "untreated"
        lines.append(
            f"  v{row['model_version']} {group}: {row['alerts']} churn alerts, "
            f"{row['known']} decided, realised precision "
            f"{_share(row['stayed_away'], row['known'])}"
        )
    for version, (caught, churners) in recall(quality).items():
        lines.append(
            f"  v{version} recall: {_share(caught, churners)} of {churners} users who stopped "
            "had a churn alert"
        )
    scores = sorted((p for p in quality.psi if p.kind == "score"), key=lambda p: p.name)
    for p in scores:
        lines.append(f"  PSI v{p.version} {p.name}: {_psi_text(p.value)}")
    features = sorted((p for p in quality.psi if p.kind == "feature"), key=lambda p: -p.value)
    for p in features[:3]:
        lines.append(f"  PSI v{p.version} feature {p.name}: {_psi_text(p.value)}")
    return lines or ["  nothing decided yet"]


def quality_section(quality: ServedQuality) -> str:
    """The report's "Served quality" section."""
    html = [
        '<h2 id="served-quality">Served quality</h2>',
        "<p>What the served version's churn alerts turned out to be, decided as "
        "<code>clickscore outcomes</code> decides them in production: an alerted user who "
        "sent an event within the churn horizon after the alert came back (a false alarm, or "
        "a saved customer when a retention action was taken); one who sent none stayed away. "
        "Event time was fast-forwarded two horizons past the replay, so every alert raised up "
        "to a horizon before the end is decided. Precision = stayed away / decided. Treated: "
        "alerts with a retention action (here every one the demo's "
        "<code>clickscore actions</code> recorded; the synthetic users do not react to "
        "them, so treated and untreated measure the same alerts).</p>",
    ]
    rows = []
    for row in quality.churn:
        version = str(row["model_version"])
        promised = quality.promised.get(version)
        rows.append(
            [
                _e(f"v{version}"),
                "treated" if row["treated"] else "untreated",
                str(row["alerts"]),
                str(row["known"]),
                str(row["stayed_away"]),
                str(row["returned"]),
                _share(row["stayed_away"], row["known"]),
                "n/a" if promised is None else f"{promised[0]:.2f} ± {promised[1]:.2f}",
            ]
        )
    header = [
        "version",
        "group",
        "churn alerts",
        "decided",
        "stayed away",
        "came back",
        "realised precision",
        "validation precision",
    ]
    html.append(
        _table(header, rows, 2) if rows else '<p class="note">No churn alert was decided.</p>'
    )
    for version, (caught, churners) in recall(quality).items():
        html.append(
            f"<p>Recall of v{_e(version)}: {_share(caught, churners)}: of the {churners} users "
            f"who stopped (no event for a churn horizon since their last), {caught} had a "
            "churn alert at or after their last event.</p>"
        )
    if quality.calibration:
        html.append(
            "<p>Purchase intent: each user's first score of each day, and whether they bought "
            "within the purchase horizon, per score decile (untreated users).</p>"
        )
        calibration = [
            [
                _e(f"v{r['model_version']}"),
                f"{r['decile'] / 10:.1f}–{(r['decile'] + 1) / 10:.1f}",
                str(r["predictions"]),
                f"{float(r['mean_score']):.2f}",
                _share(r["purchases"], r["predictions"]),
            ]
            for r in quality.calibration
        ]
        html.append(
            _table(["version", "score", "predictions", "mean score", "bought"], calibration, 2)
        )
    html.append(
        "<p>Drift: PSI of what the worker served over its last hour against the version's "
        "reference (<code>reference.json</code>, validation data): below 0.1 stable, 0.1 to "
        "0.25 moderate, above 0.25 significant.</p>"
    )
    ordered = sorted(quality.psi, key=lambda p: (p.kind != "score", -p.value))
    shown = [p for p in ordered if p.kind == "score"] + [p for p in ordered if p.kind == "feature"][
        :8
    ]
    if shown:
        html.append(
            _table(
                ["version", "series", "PSI"],
                [
                    [_e(f"v{p.version}"), _e(f"{p.kind} {p.name}"), _psi_text(p.value)]
                    for p in shown
                ],
                2,
            )
        )
    else:
        html.append(
            '<p class="note">No PSI: the served version has no reference, or the worker saw '
            "too few scores.</p>"
        )
    html += [f'<p class="note">{_e(n)}</p>' for n in quality.notes]
    return "".join(html)
