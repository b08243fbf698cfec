"""The promotion gate: a verdict per served task, the candidate against the serving version.

Like TFX's Evaluator "blessing" and MLflow's MetricThreshold, a candidate must pass two kinds
of threshold on every served task:

- a change threshold against the serving version, on the same held-out users: the candidate
  is refused when the paired difference's 95 % interval lies entirely below -margin (it is
  worse beyond doubt, not merely lower by noise);
- a value threshold (a floor) where one means something: a ROC-AUC whose interval does not
  clear 0.5 ranks no better than chance, and is refused even when nothing serves the task.

An alert kind is judged on the precision its threshold promised first, then on recall
(`alert_verdict`): raising the precision of alerts that broke their promise is no regression.

Verdicts: "better" (difference interval above 0), "not worse", "worse", and "new" when the
serving version does not serve the task. A task the serving version serves and the candidate
does not is measured as the candidate's (an alert kind with no threshold has recall 0) and so
can be "worse" too. The best baseline is reported beside each task; it does not decide.

Pure logic: the figures come from trainer/evaluate/heldout.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Metrics below which a model is worthless whatever serves (ROC-AUC 0.5: chance ranking).
FLOORS = {"roc_auc": 0.5}
VERDICTS = ("better", "not worse", "worse", "new")


@dataclass(frozen=True)
class Estimate:
    value: float
    interval: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"value": _num(self.value), "interval": [_num(v) for v in self.interval]}

    def text(self) -> str:
        lo, hi = self.interval
        return f"{self.value:.3f} [{lo:.3f}, {hi:.3f}]"


@dataclass(frozen=True)
class Measure:
    """One metric of one task on the held-out users."""

    metric: str
    candidate: Estimate
    serving: Estimate | None = None
    difference: Estimate | None = None  # candidate - serving, paired over users
    baseline: tuple[str, Estimate] | None = None  # the best baseline's name and figure


@dataclass
class TaskVerdict:
    task: str
    verdict: str
    reason: str
    measures: list[Measure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict, "reason": self.reason}
        for i, m in enumerate(self.measures):
            entry: dict[str, Any] = {
                "metric": m.metric,
                "candidate": m.candidate.to_dict(),
                "serving": m.serving.to_dict() if m.serving else None,
                "difference": m.difference.to_dict() if m.difference else None,
                "baseline": (
                    {"name": m.baseline[0], **m.baseline[1].to_dict()} if m.baseline else None
                ),
            }
            # The first metric at the top level (the design's shape), every one under metrics.
            if i == 0:
                out.update(entry)
            out.setdefault("metrics", {})[m.metric] = entry
        return out


@dataclass
class GateDecision:
    promote: bool
    reason: str
    tasks: dict[str, TaskVerdict]

    def table(self) -> dict[str, Any]:
        return {task: verdict.to_dict() for task, verdict in self.tasks.items()}


def metric_verdict(measure: Measure, margin: float) -> tuple[str, str]:
    """One metric's verdict and the figures that decided it."""
    name = measure.metric
    floor = FLOORS.get(name)
    if floor is not None and not measure.candidate.interval[0] > floor:
        return "worse", f"{name} {measure.candidate.text()} does not clear {floor}"
    if measure.serving is None or measure.difference is None:
        return "new", f"{name} {measure.candidate.text()}, nothing served"
    lo, hi = measure.difference.interval
    figures = (
        f"{name} {measure.candidate.text()} vs serving {measure.serving.text()}, "
        f"difference {measure.difference.text()}"
    )
    if math.isnan(lo) or math.isnan(hi):
        # No round measured it on both (e.g. neither version raised an alert): no evidence.
        return "not worse", f"{figures} (not measurable)"
    if hi < -margin:
        return "worse", f"{figures} below -{margin}"
    if lo > 0:
        return "better", figures
    return "not worse", figures


def _keeps(estimate: Estimate | None, target: float) -> bool:
    """The figure is not shown to be below the target: its interval reaches it."""
    return (
        estimate is not None
        and not math.isnan(estimate.interval[1])
        and (estimate.interval[1] >= target)
    )


def alert_verdict(task: str, measures: list[Measure], target: float, margin: float) -> TaskVerdict:
    """An alert kind is judged on its promise first, then on what it finds.

    Its threshold was chosen for a target precision (what a retention team budgets for), so
    precision and recall are not two scores to hold up one by one: a version whose alerts
    fall clearly below the promised precision breaks it whatever their recall, and among
    versions that keep it, recall decides. So: the candidate keeps the promise and the
    serving version breaks it -> better (recall not compared); the reverse -> worse; both
    keep it -> recall's verdict; both break it -> precision's.
    """
    by_metric = {m.metric: m for m in measures}
    precision, recall = by_metric["precision"], by_metric["recall"]
    ours = _keeps(precision.candidate, target)
    figures = f"precision {precision.candidate.text()}, recall {recall.candidate.text()}"
    if precision.serving is None or recall.serving is None:
        verdict = "new" if ours else "worse"
        why = "keeps" if ours else "falls below"
        reason = f"{task}: {verdict}: {figures} {why} the promised precision {target}"
        return TaskVerdict(task, verdict, reason, measures)
    theirs = _keeps(precision.serving, target)
    if ours != theirs:
        verdict = "better" if ours else "worse"
        keeper, breaker = ("candidate", "serving") if ours else ("serving", "candidate")
        reason = (
            f"{task}: {verdict}: the {keeper}'s alerts keep the promised precision {target}, "
            f"the {breaker}'s do not ({figures}; serving precision "
            f"{precision.serving.text()}, recall {recall.serving.text()})"
        )
        return TaskVerdict(task, verdict, reason, measures)
    decider = recall if ours else precision
    verdict, why = metric_verdict(decider, margin)
    kept = "both keep" if ours else "neither keeps"
    reason = f"{task}: {verdict}: {kept} the promised precision {target}; {why}"
    return TaskVerdict(task, verdict, reason, measures)


def task_verdict(task: str, measures: list[Measure], margin: float) -> TaskVerdict:
    """The task's verdict: its worst metric's (worse < new < not worse < better)."""
    rank = {"worse": 0, "new": 1, "not worse": 2, "better": 3}
    verdicts = [(*metric_verdict(m, margin), m) for m in measures]
    worst = min(verdicts, key=lambda v: rank[v[0]])[0]
    reasons = (
        "; ".join(r for v, r, _ in verdicts if v == worst)
        if worst == "worse"
        else "; ".join(r for _, r, _ in verdicts)
    )
    baselines = [
        f"best baseline {m.baseline[0]} {m.metric} {m.baseline[1].text()}"
        for m in measures
        if m.baseline
    ]
    reason = f"{task}: {worst}: {reasons}" + (f" ({'; '.join(baselines)})" if baselines else "")
    return TaskVerdict(task, worst, reason, measures)


def decide(
    tasks: dict[str, list[Measure]], margin: float, promises: Mapping[str, float] | None = None
) -> GateDecision:
    """Promote when no served task is worse; the reason names each refusing task.

    `promises`: alert tasks (precision and recall measures) and the precision their
    thresholds were chosen for, judged by `alert_verdict`.
    """
    promised = promises or {}
    verdicts = {
        task: (
            alert_verdict(task, measures, promised[task], margin)
            if task in promised
            else task_verdict(task, measures, margin)
        )
        for task, measures in tasks.items()
    }
    worse = [v for v in verdicts.values() if v.verdict == "worse"]
    if not verdicts:
        return GateDecision(False, "no task was measured", verdicts)
    if worse:
        return GateDecision(False, "refused: " + " | ".join(v.reason for v in worse), verdicts)
    summary = ", ".join(f"{t} {v.verdict}" for t, v in verdicts.items())
    return GateDecision(True, f"no served task worse (margin {margin}): {summary}", verdicts)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
