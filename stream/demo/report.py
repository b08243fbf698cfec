"""The demo's HTML report: one self-contained file, each figure a PNG embedded as base64.

Pure: `ReportData` in, figures (PNG bytes) and HTML out. Gathering the data from PostgreSQL
and the model repository is `stream.demo.report_data`'s job. matplotlib is imported when a figure
is drawn, so the worker never needs it (it ships in the `demo` extra).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCORE_NAMES = {
    "churn_risk": "churn risk",
    "purchase_intent": "purchase intent",
    "anomaly": "anomaly",
}


class ReportUnavailable(RuntimeError):
    """matplotlib is missing; the message says how to install it."""


@dataclass(frozen=True)
class PrecisionRecall:
    label: str
    flagged: int
    actual: int
    hits: int
    population: int = 0  # every user the truth covers; 0: unknown

    @property
    def precision(self) -> float | None:
        return self.hits / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.hits / self.actual if self.actual else None

    @property
    def base_rate(self) -> float | None:
        """The precision of flagging users at random: what an alert has to beat."""
        return self.actual / self.population if self.population else None


def precision_recall(
    label: str, flagged: set[str], actual: set[str], population: int = 0
) -> PrecisionRecall:
    return PrecisionRecall(label, len(flagged), len(actual), len(flagged & actual), population)


# Plain-language names of the accuracy columns, for the terminal and the report.
PRECISION_TEXT = "precision (of the flagged users, the share that really were)"
RECALL_TEXT = "recall (of the users that really were, the share flagged)"
BASE_RATE_TEXT = "base rate (the share of all users that were: random flagging's precision)"


@dataclass(frozen=True)
class FlaggedUser:
    """One alert, with why: the score, the threshold it crossed and the user's last events."""

    user_id: str
    kind: str
    score: float
    threshold: float
    reason: str
    last_events: Sequence[str]
    truth: str = ""  # what the user really was, where the ground truth is known


@dataclass(frozen=True)
class ModelEvaluation:
    model: str
    version: str | None  # None: no version in the repository
    metrics: Mapping[str, Any] | None  # None: the version records no evaluation


@dataclass(frozen=True)
class ReportData:
    title: str
    generated_at: datetime
    facts: Sequence[tuple[str, str]]  # the summary, label -> value
    scores: Mapping[str, Sequence[float]]  # SCORE_NAMES key -> one value per user
    alerts: Sequence[tuple[datetime, str]]  # (event time, kind)
    latencies_s: Sequence[float]  # event-triggered scores only
    latency_source: str
    accuracy: Sequence[PrecisionRecall]
    model: ModelEvaluation
    notes: Sequence[str] = field(default_factory=tuple)
    flagged: Sequence[FlaggedUser] = field(default_factory=tuple)
    served_quality: str = ""  # the rendered section of stream/demo/quality.py, if any


@dataclass(frozen=True)
class Figure:
    title: str
    alt: str
    png: bytes
    caption: str = ""


# --- figures --------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportUnavailable(
            "the HTML report needs matplotlib: pip install 'clickscore[demo]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def score_distributions(scores: Mapping[str, Sequence[float]]) -> Figure:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(SCORE_NAMES), figsize=(12, 3.2))
    for ax, (key, name) in zip(axes, SCORE_NAMES.items(), strict=True):
        values = list(scores.get(key, ()))
        if values:
            ax.hist(values, bins=20, range=(0.0, 1.0), color="#3b6ea8", edgecolor="white")
        else:
            _empty(ax, "no scores")
        ax.set_title(name)
        ax.set_xlabel("score")
        ax.set_xlim(0, 1)
    axes[0].set_ylabel("users")
    users = max((len(v) for v in scores.values()), default=0)
    return Figure(
        "Score distributions",
        f"Histograms of churn risk, purchase intent and anomaly scores over {users} users",
        _png(fig),
        "The latest score of every user, from PostgreSQL.",
    )


def alert_timeline(alerts: Sequence[tuple[datetime, str]]) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 3.2))
    kinds = sorted({kind for _, kind in alerts})
    if alerts:
        import matplotlib.dates

        mdates: Any = matplotlib.dates  # partly untyped
        times = [mdates.date2num(at) for at, _ in alerts]
        low, high = min(times), max(times)
        bins = 48 if high > low else 1
        stacks = [
            [t for t, (_, k) in zip(times, alerts, strict=True) if k == kind] for kind in kinds
        ]
        ax.hist(stacks, bins=bins, range=(low, high + 1e-6), stacked=True, label=kinds)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        ax.legend(title="kind")
    else:
        _empty(ax, "no alerts were raised")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel("alerts")
    counts = ", ".join(f"{sum(1 for _, k in alerts if k == kind)} {kind}" for kind in kinds)
    return Figure(
        "Alert timeline",
        f"Alerts per time bin by event time, stacked by kind: {counts or 'none'}",
        _png(fig),
        "When the events that raised each alert happened (event time, after the replay's shift).",
    )


def latency_histogram(latencies_s: Sequence[float], source: str) -> Figure:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 3.2))
    values = [max(v, 1e-4) for v in latencies_s]
    if values:
        low, high = min(values), max(values)
        edges = _log_edges(low, high, 40)
        ax.hist(values, bins=edges, color="#c0703a", edgecolor="white")
        ax.set_xscale("log")
        for q, style in ((0.5, "--"), (0.99, ":")):
            value = quantile(values, q)
            ax.axvline(value, color="black", linestyle=style, label=f"p{q * 100:g} {value:.3f} s")
        ax.legend()
    else:
        _empty(ax, "no latencies were measured")
    ax.set_xlabel("seconds")
    ax.set_ylabel("scores")
    return Figure(
        "Event-triggered score latency",
        f"Histogram of {len(values)} event-triggered score latencies on a log scale ({source})",
        _png(fig),
        f"Measured as: {source}. Silent re-scores are not latency: the summary gives their "
        "own figure, from when each fell due.",
    )


def _log_edges(low: float, high: float, count: int) -> list[float]:
    if high <= low:
        return [low * 0.9, high * 1.1]
    step = (math.log10(high) - math.log10(low)) / count
    return [10 ** (math.log10(low) + i * step) for i in range(count + 1)]


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of a sample, linearly interpolated between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def figures(data: ReportData) -> list[Figure]:
    return [
        score_distributions(data.scores),
        alert_timeline(data.alerts),
        latency_histogram(data.latencies_s, data.latency_source),
    ]


# --- HTML -----------------------------------------------------------------------------------

# Sets data-images-ok on <body> once every image decoded: the browser test reads it.
_CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.length > 0 && images.every(function (img) {
    return img.complete && img.naturalWidth > 0;
  });
  document.body.dataset.imagesOk = ok ? "true" : "false";
  document.body.dataset.imagesDecoded = String(
    images.filter(function (img) { return img.naturalWidth > 0; }).length);
});
"""

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.note { color: #8a5a00; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _metric(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _accuracy_section(accuracy: Sequence[PrecisionRecall]) -> str:
    rows = [
        [
            _e(a.label),
            _ratio(a.precision),
            _ratio(a.recall),
            _ratio(a.base_rate),
            str(a.flagged),
            str(a.actual),
        ]
        for a in accuracy
    ]
    header = [
        "alerts vs ground truth",
        PRECISION_TEXT,
        RECALL_TEXT,
        BASE_RATE_TEXT,
        "flagged users",
        "true users",
    ]
    return "<h2>Alerts against the injected ground truth</h2>" + _table(header, rows, 1)


def _flagged_section(flagged: Sequence[FlaggedUser]) -> str:
    if not flagged:
        return '<h2>Flagged users</h2><p class="note">No user was flagged.</p>'
    rows = [
        [
            _e(f.user_id),
            _e(f.kind),
            f"{f.score:.2f}",
            f"{f.threshold:.2f}",
            _e(f.reason),
            _e(", ".join(f.last_events)),
            _e(f.truth),
        ]
        for f in flagged
    ]
    header = ["user", "alert", "score", "threshold", "why", "last events", "really"]
    return (
        '<h2 id="flagged-users">Flagged users</h2>'
        "<p>Every alert of this run, with the score, the threshold it crossed and the "
        "user's last events (the last one triggered it).</p>" + _table(header, rows, 2)
    )


def _model_section(model: ModelEvaluation) -> str:
    title = f"<h2>Serving model: {_e(model.model)} version {_e(model.version or '?')}</h2>"
    if model.version is None:
        return title + f'<p class="note">No version of {_e(model.model)} was found.</p>'
    if not model.metrics:
        return title + (
            '<p class="note">The served model records no evaluation metrics '
            "(its model_config.json has no <code>metrics</code>).</p>"
        )
    rows = [[_e(name), _metric(value)] for name, value in sorted(model.metrics.items())]
    return (
        title
        + "<p>Held-out evaluation from the trainer:</p>"
        + _table(["metric", "value"], rows, 1)
    )


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f"<figure><h2>{_e(figure.title)}</h2>"
        f'<img src="data:image/png;base64,{data}" alt="{_e(figure.alt)}">'
        f"<figcaption>{_e(figure.caption)}</figcaption></figure>"
    )


def build_html(data: ReportData, drawn: Sequence[Figure]) -> str:
    facts = _table([], [[_e(k), _e(v)] for k, v in data.facts], 1)
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)
    stamp = data.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(data.title)}</title><style>{_STYLE}</style>"
        f"<script>{_CHECK_IMAGES}</script></head><body>"
        f"<h1>{_e(data.title)}</h1><p>Generated {stamp}.</p>{notes}"
        f"<h2>Summary</h2>{facts}"
        + "".join(_figure(f) for f in drawn)
        + _accuracy_section(data.accuracy)
        + data.served_quality
        + _flagged_section(data.flagged)
        + _model_section(data.model)
        + "</body></html>\n"
    )


def write_report(data: ReportData, directory: Path) -> Path:
    """Draw the figures and write `directory/index.html`; returns its path."""
    html_text = build_html(data, figures(data))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "index.html"
    path.write_text(html_text, encoding="utf-8")
    return path
