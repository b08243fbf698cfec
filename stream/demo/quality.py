"""The demo's "served quality": what the served version's alerts and scores turned out to be
worth, as an operator sees it (docs/monitoring.md), and how far the replayed traffic drifted
from the version's reference.

`clickscore outcomes` runs once, in-process, after the replay: its clock is the newest event
time scored, the end of the replayed data, so it decides the alerts raised at least a churn
horizon before that end, on what the users really did next. The replay is not fast-forwarded
past its end: every user stops where the data stops, so an alert of the last horizon would
read as "stayed away" whatever the user would have done (measured: docs/monitoring.md). PSI
is read from the worker's /metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stream.contract.drift import SIGNIFICANT, STABLE
from stream.demo.report import _e, _table
from stream.ops import outcomes
from stream.ops.scrape import fetch_text, metrics_url
from stream.settings import Settings


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


async def wait_stored(
    settings: Settings, expected: Mapping[str, int], alive: Callable[[], bool]
) -> None:
    """Until PostgreSQL holds every user's score with all of their events: the scores topic
    may have them first (the worker writes Kafka and PostgreSQL together), and the outcomes
    job reads PostgreSQL."""
    engine = create_async_engine(settings.database_url)
    deadline = time.monotonic() + 60.0
    try:
        while True:
            async with engine.connect() as conn:
                rows = await conn.execute(text("SELECT user_id, event_count FROM user_scores"))
                stored = {user: count for user, count in rows}
            missing = [u for u, n in expected.items() if stored.get(u, 0) < n]
            if not missing:
                return
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} users' scores not in PostgreSQL; see the log")
            await asyncio.sleep(0.2)
    finally:
        await engine.dispose()


async def served_quality(settings: Settings, psi: list[Psi]) -> ServedQuality:
    """Run the outcomes job once and read what it decided, all days."""
    run = await outcomes.run_once(settings)
    quality = ServedQuality(psi=psi, event_time=run.now)
    if run.now is None:
        return quality
    # As the gauges do: only days whose outcomes are all decided. A younger alert's return is
    # known at once but its staying away only a horizon later, so counting it would bias
    # precision down.
    churn_until = (run.now - timedelta(seconds=settings.churn_horizon_s)).date()
    purchase_until = (run.now - timedelta(seconds=settings.purchase_horizon_s)).date()
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            churn = await conn.execute(
                text(
                    "SELECT model_version, treated, sum(alerts) AS alerts, sum(known) AS known, "
                    "sum(stayed_away) AS stayed_away, sum(returned) AS returned, "
                    "sum(churners) AS churners, sum(caught) AS caught "
                    "FROM churn_quality_daily WHERE day < :until GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                {"until": churn_until},
            )
            quality.churn = [dict(r._mapping) for r in churn]
            calibration = await conn.execute(
                text(
                    "SELECT model_version, decile, sum(predictions) AS predictions, "
                    "sum(purchases) AS purchases, "
                    "sum(mean_score * predictions) / sum(predictions) AS mean_score "
                    "FROM purchase_calibration_daily WHERE NOT treated AND day < :until "
                    "GROUP BY 1, 2 ORDER BY 1, 2"
                ),
                {"until": purchase_until},
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
        "Counted are the alerts of the days that ended at least a horizon before the end of "
        "the replayed data, all decided; later ones wait for data that does not exist. "
        "Precision = stayed away / decided. "
        "Treated: "
        "alerts with a retention action (here every one the demo's "
        "<code>clickscore actions</code> recorded; the replayed users cannot react to "
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
