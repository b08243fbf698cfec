"""Alert thresholds chosen on validation data: the rule a retention team can budget for.

`choose_threshold` is the rule versions are built with. A cut (every score at or above it
alerts) qualifies when
  - it has at least `min_alerts` alerts, so one lucky top score cannot set it;
  - its precision reaches the target;
  - its precision is clearly above the base rate: the Wilson 95 % lower bound of that
    precision is at least `min_lift` (1.1) times the base rate. Random alerts reach the base
    rate, so a target below it (CDNOW: 70 % churn, target 0.6) would otherwise be met by
    alerting on everyone; and a bound merely above it is met by flagging 97 % of CDNOW's
    customers at precision 0.70 against 0.69 (measured), which tells a team nothing;
  - it alerts on at most `max_alert_rate` of the rows (a retention team's budget), if set;
  - it leaves at least one row unflagged.
Of the qualifying cuts the lowest is kept: the most recall the rules allow. None qualifies:
the threshold is None with a reason, and the version raises no alert of that kind.

`threshold_for_precision` is the older rule (target precision and `min_alerts` only), kept for
the commands that still call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PrecisionThreshold:
    threshold: float
    target_precision: float
    precision: float  # on the data it was chosen on
    recall: float
    alerts: int
    base_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_precision": self.target_precision,
            "validation_precision": self.precision,
            "validation_recall": self.recall,
            "validation_alerts": self.alerts,
            "validation_base_rate": self.base_rate,
        }


def threshold_for_precision(
    labels: npt.ArrayLike, scores: npt.ArrayLike, target: float, min_alerts: int = 10
) -> PrecisionThreshold | None:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < target <= 1:
        raise ValueError("target precision must be in (0, 1]")
    if not len(y) or y.sum() == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Only the last row of each run of equal scores is a cut a threshold can make.
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    hits = np.cumsum(y_sorted)
    flagged = np.arange(1, len(y) + 1)
    precision = hits / flagged
    ok = last_of_tie & (precision >= target) & (flagged >= min_alerts)
    if not ok.any():
        return None
    k = int(np.flatnonzero(ok)[-1])
    return PrecisionThreshold(
        threshold=float(s_sorted[k]),
        target_precision=target,
        precision=float(precision[k]),
        recall=float(hits[k] / y.sum()),
        alerts=int(flagged[k]),
        base_rate=float(y.mean()),
    )


def precision_recall_at(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    y = np.asarray(labels, dtype=np.float64)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    tp = float((flagged & (y == 1)).sum())
    return {
        "precision": tp / flagged.sum() if flagged.any() else float("nan"),
        "recall": tp / y.sum() if y.sum() else float("nan"),
        "alerts": float(flagged.sum()),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
    }


def best_precision(
    labels: npt.ArrayLike, scores: npt.ArrayLike, min_alerts: int = 10
) -> dict[str, float] | None:
    """The highest precision any threshold reaches with at least `min_alerts` alerts, at the
    highest such threshold (what a target above it would have to beat); None without one."""
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    flagged = np.arange(1, len(y) + 1)
    precision = np.cumsum(y_sorted) / flagged
    ok = last_of_tie & (flagged >= min_alerts)
    if not ok.any() or not y.sum():
        return None
    cuts = np.flatnonzero(ok)
    k = int(cuts[np.argmax(precision[cuts])])
    return {
        "threshold": float(s_sorted[k]),
        **precision_recall_at(y, s, float(s_sorted[k])),
    }


Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson_lower(hits: npt.ArrayLike, n: npt.ArrayLike, z: float = Z95) -> npt.NDArray[np.float64]:
    """Wilson score interval's lower bound of a proportion hits / n (0 where n is 0)."""
    h = np.asarray(hits, dtype=np.float64)
    m = np.maximum(np.asarray(n, dtype=np.float64), 1.0)
    p = h / m
    z2 = z * z
    centre = p + z2 / (2 * m)
    spread = z * np.sqrt(p * (1 - p) / m + z2 / (4 * m * m))
    return np.where(np.asarray(n) > 0, (centre - spread) / (1 + z2 / m), 0.0)


@dataclass(frozen=True)
class ThresholdChoice:
    """What `choose_threshold` decided, with the validation figures behind it. The figures
    describe the chosen cut, or with no threshold the best cut the rules were tried on."""

    threshold: float | None
    reason: str
    target_precision: float
    max_alert_rate: float | None
    min_alerts: int
    min_lift: float
    rows: int
    base_rate: float
    precision: float | None = None
    precision_low95: float | None = None
    recall: float | None = None
    alerts: int = 0
    alert_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """model_config.json's alert_thresholds.<kind> (the keys the worker, the drift
        reference and the outcomes job read: threshold, validation_precision, _alerts)."""
        return {
            "threshold": self.threshold,
            "reason": self.reason,
            "target_precision": self.target_precision,
            "max_alert_rate": self.max_alert_rate,
            "min_alerts": self.min_alerts,
            "min_lift": self.min_lift,
            "validation_rows": self.rows,
            "validation_base_rate": self.base_rate,
            "validation_precision": self.precision,
            "validation_precision_low95": self.precision_low95,
            "validation_recall": self.recall,
            "validation_alerts": self.alerts,
            "validation_alert_rate": self.alert_rate,
        }


def choose_threshold(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    target_precision: float,
    max_alert_rate: float | None = None,
    min_alerts: int = 10,
    min_lift: float = 1.1,
) -> ThresholdChoice:
    """The lowest cut that meets every rule of the module docstring, or None and why."""
    if not 0 < target_precision <= 1:
        raise ValueError("target precision must be in (0, 1]")
    if max_alert_rate is not None and not 0 < max_alert_rate <= 1:
        raise ValueError("the alert rate cap must be in (0, 1]")
    if min_lift < 1:
        raise ValueError("min_lift below 1 would accept alerts worse than random")
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n, positives = len(y), float(y.sum()) if len(y) else 0.0
    base = positives / n if n else float("nan")
    none: dict[str, Any] = {
        "threshold": None,
        "target_precision": target_precision,
        "max_alert_rate": max_alert_rate,
        "min_alerts": min_alerts,
        "min_lift": min_lift,
        "rows": n,
        "base_rate": base,
    }
    if not np.isfinite(s).all():
        return ThresholdChoice(reason="validation scores hold NaN or infinity", **none)
    if positives == 0 or positives == n:
        return ThresholdChoice(
            reason=f"validation labels hold one class ({positives:.0f} positive of {n} rows)",
            **none,
        )
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # Only the last row of each run of equal scores is a cut a threshold can make.
    cut = np.r_[s_sorted[1:] != s_sorted[:-1], False]  # the last row would flag everyone
    flagged = np.arange(1, n + 1)
    hits = np.cumsum(y_sorted)
    precision = hits / flagged
    low = wilson_lower(hits, flagged)
    # (rule, why none passes it); the cap's closest miss is the cut with the fewest alerts,
    # the others' the most precise cut that passed the rules before.
    rules = [
        (flagged >= min_alerts, f"no cut has {min_alerts} alerts and leaves a row unflagged"),
        (precision >= target_precision, f"no cut reaches precision {target_precision:.2f}"),
        (
            (low > base) & (low >= min_lift * base),
            f"no cut reaching precision {target_precision:.2f} is clearly above the base rate "
            f"{base:.3f} (the Wilson 95 % lower bound of its precision under {min_lift:g} x it)",
        ),
    ]
    if max_alert_rate is not None:
        cap = flagged <= max_alert_rate * n
        why = f"every cut that meets the precision rules alerts on more than {max_alert_rate:.0%}"
        rules.append((cap, why + " of rows"))

    def at(k: int | None, threshold: float | None, reason: str) -> ThresholdChoice:
        if k is None:
            return ThresholdChoice(reason=reason, **{**none, "threshold": threshold})
        return ThresholdChoice(
            reason=reason,
            **{**none, "threshold": threshold},
            precision=float(precision[k]),
            precision_low95=float(low[k]),
            recall=float(hits[k] / positives),
            alerts=int(flagged[k]),
            alert_rate=float(flagged[k] / n),
        )

    ok = cut.copy()
    for rule, why in rules:
        narrowed = ok & rule
        if not narrowed.any():
            passed = np.flatnonzero(ok)
            is_cap = max_alert_rate is not None and rule is rules[-1][0]
            k = None
            if passed.size:
                k = int(passed[0] if is_cap else passed[np.argmax(precision[passed])])
            return at(k, None, why + "; this version raises no alert of this kind")
        ok = narrowed
    k = int(np.flatnonzero(ok)[-1])
    return at(
        k,
        float(s_sorted[k]),
        f"the lowest cut with precision >= {target_precision:.2f}, its Wilson 95 % lower bound "
        f"{low[k]:.3f} at least {min_lift:g} x the base rate {base:.3f}, at least {min_alerts} "
        "alerts"
        + (f", at most {max_alert_rate:.0%} of rows" if max_alert_rate is not None else ""),
    )
