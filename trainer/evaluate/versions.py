"""The pipeline's evaluate step: the candidate and the serving version on the same held-out
(test) users, each scored through stream/serving/version.py `ServedVersion`, the code Triton
runs, so the gate measures exactly what would be served; plus the best baseline per task.

Tasks and their figures (trainer/gate.py turns them into verdicts):

    churn, purchase   ROC-AUC on the test users' labelled scoring points;
                      baselines: RFM + gradient boosting on the same points, recency
    next_items        HR@10 and MRR@10 of the next event's item after each event point;
                      baseline: the train users' most popular items
    churn_alert       precision and recall per user at each version's own threshold, counted
                      as the demo counts alerts (trainer/alert_thresholds.py)

Intervals: percentile bootstrap over test users (trainer/evaluate/heldout.py), paired.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from stream.contract.features import NAMES
from stream.contract.tokenizer import Vocabulary
from trainer.alert_thresholds import per_user
from trainer.evaluate.heldout import Bootstrap, auc_draws, point_auc, ratio, ratio_draws
from trainer.gate import Estimate, Measure
from trainer.labels.points import Points

Array = npt.NDArray[np.float64]
K = 10
RFM = ("log_silence_hours", "log_events", "log_spend", "log_purchases", "log_active_days")
BATCH = 2048


@dataclass
class HeldOut:
    rows: Points  # labelled points (churn, purchase, next items)
    every: Points  # every scoring point (per-user alerts)
    churners: set[str] | None
    end_ms: int
    horizon_ms: int


@dataclass
class Scored:
    churn: Array
    purchase: Array
    next_items: npt.NDArray[Any]  # (n, K) bytes
    alert_churn: Array  # per point of `every`
    churn_threshold: float
    served: dict[str, str | None]


def score_version(folder: Path, data: HeldOut, vocab: Vocabulary) -> Scored:
    from stream.serving.version import ServedVersion

    version = ServedVersion.load(folder)
    length = version.sequence_length

    def run(points: Points) -> dict[str, npt.NDArray[Any]]:
        tokens, hashes, features = points.inputs(vocab, length)
        parts = [
            version.score(tokens[i : i + BATCH], hashes[i : i + BATCH], features[i : i + BATCH], K)
            for i in range(0, len(tokens), BATCH)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    rows, every = run(data.rows), run(data.every)
    return Scored(
        churn=rows["CHURN"][:, 0].astype(np.float64),
        purchase=rows["PURCHASE"][:, 0].astype(np.float64),
        next_items=rows["NEXT_ITEMS"],
        alert_churn=every["CHURN"][:, 0].astype(np.float64),
        churn_threshold=float(version.churn_threshold),
        served=dict(version.served),
    )


def rfm_baselines(
    train: Points, test: Points, vocab: Vocabulary, seed: int
) -> dict[str, dict[str, Array]]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    columns = [NAMES.index(name) for name in RFM]
    x_train = train.features(vocab)[:, columns]
    x_test = test.features(vocab)[:, columns]
    out: dict[str, dict[str, Array]] = {}
    for task in ("churn", "purchase"):
        model = HistGradientBoostingClassifier(random_state=seed)
        model.fit(x_train, train.labels(task))
        recency = x_test[:, 0].astype(np.float64)
        out[task] = {
            "rfm_gbdt": model.predict_proba(x_test)[:, 1].astype(np.float64),
            "recency": recency if task == "churn" else -recency,
        }
    return out


def popular_items(train_items: list[str | None]) -> list[bytes]:
    counts = Counter(i for i in train_items if i)
    return [item.encode() for item, _ in counts.most_common(K)]


def ranks(names: npt.NDArray[Any], targets: list[str | None]) -> Array:
    """1-based rank of each target among its row's items (0: not among them)."""
    out = np.zeros(len(targets))
    for i, target in enumerate(targets):
        if target is None:
            continue
        hits = np.flatnonzero(names[i] == target.encode())
        out[i] = hits[0] + 1 if hits.size else 0
    return out


class Measurer:
    """Figures of one version (or baseline) on the test users, on shared bootstrap rounds."""

    def __init__(self, data: HeldOut, rounds: int, seed: int) -> None:
        self.data = data
        self.boot = Bootstrap.over(
            sorted(set(data.rows.users) | set(data.every.users)), rounds, seed
        )
        self.rows = self.boot.for_rows(data.rows.users)
        has_next = np.array([t is not None for t in data.rows.next_item])
        self.next_mask = has_next
        self.next_rows = self.boot.for_rows(
            [u for u, k in zip(data.rows.users, has_next, strict=True) if k]
        )

    def auc(self, task: str, scores: Array) -> tuple[float, Array]:
        y = self.data.rows.labels(task)
        return point_auc(y, scores), auc_draws(self.rows, y, scores)

    def next_items(self, names: npt.NDArray[Any]) -> dict[str, tuple[float, Array]]:
        targets = [t for t, k in zip(self.data.rows.next_item, self.next_mask, strict=True) if k]
        r = ranks(names[self.next_mask], targets)
        hit, rr = (r > 0).astype(np.float64), np.where(r > 0, 1 / np.maximum(r, 1), 0.0)
        ones = np.ones_like(hit)
        return {
            f"hr@{K}": (ratio(hit, ones), ratio_draws(self.next_rows, hit, ones)),
            f"mrr@{K}": (ratio(rr, ones), ratio_draws(self.next_rows, rr, ones)),
        }

    def alerts(self, scores: Array, threshold: float) -> dict[str, tuple[float, Array]]:
        d = self.data
        users, truth, best = per_user(d.every, scores, d.churners, d.end_ms, d.horizon_ms)
        flagged = (best >= threshold).astype(np.float64)
        hits = flagged * truth
        boot = self.boot.for_rows(users)
        return {
            "precision": (ratio(hits, flagged), ratio_draws(boot, hits, flagged)),
            "recall": (ratio(hits, truth), ratio_draws(boot, hits, truth)),
        }


def _measure(
    boot: Bootstrap,
    metric: str,
    candidate: tuple[float, Array],
    serving: tuple[float, Array] | None,
    baselines: dict[str, tuple[float, Array]] | None = None,
) -> Measure:
    best = None
    if baselines:
        name = max(baselines, key=lambda n: np.nan_to_num(baselines[n][0], nan=-1.0))
        best = (name, boot.estimate(baselines[name][1], baselines[name][0]))
    return Measure(
        metric,
        boot.estimate(candidate[1], candidate[0]),
        boot.estimate(serving[1], serving[0]) if serving else None,
        boot.estimate(candidate[1] - serving[1], candidate[0] - serving[0]) if serving else None,
        best,
    )


def evaluate(
    data: HeldOut,
    candidate: Scored,
    serving: Scored | None,
    baselines: dict[str, dict[str, Array]],
    popular: list[bytes],
    rounds: int,
    seed: int,
) -> dict[str, list[Measure]]:
    """Every task the candidate or the serving version serves -> its measures."""
    m = Measurer(data, rounds, seed)

    def serves(scored: Scored | None, task: str) -> bool:
        return scored is not None and scored.served.get(task) is not None

    tasks: dict[str, list[Measure]] = {}
    for task in ("churn", "purchase"):
        if not serves(candidate, task):
            continue
        ours = m.auc(task, getattr(candidate, task))
        theirs = m.auc(task, getattr(serving, task)) if serves(serving, task) else None
        base = {name: m.auc(task, s) for name, s in baselines[task].items()}
        tasks[task] = [_measure(m.rows, "roc_auc", ours, theirs, base)]
    if serves(candidate, "next_items") or serves(serving, "next_items"):
        ours_n = m.next_items(candidate.next_items)
        theirs_n = (
            m.next_items(serving.next_items)
            if serving is not None and serves(serving, "next_items")
            else None
        )
        table = np.array([popular + [b""] * (K - len(popular))] * len(data.rows), dtype=object)
        base_n = m.next_items(table)
        tasks["next_items"] = [
            _measure(
                m.next_rows,
                metric,
                ours_n[metric],
                theirs_n[metric] if theirs_n else None,
                {"popularity": base_n[metric]},
            )
            for metric in ours_n
        ]
    ours_a = m.alerts(candidate.alert_churn, candidate.churn_threshold)
    theirs_a = None
    if serving is not None and np.isfinite(serving.churn_threshold):
        theirs_a = m.alerts(serving.alert_churn, serving.churn_threshold)
    if np.isfinite(candidate.churn_threshold) or theirs_a is not None:
        users = m.boot.for_rows(sorted(set(data.every.users)))
        tasks["churn_alert"] = [
            _measure(users, metric, ours_a[metric], theirs_a[metric] if theirs_a else None)
            for metric in ("precision", "recall")
        ]
    return tasks


def summary(estimate: Estimate) -> dict[str, Any]:
    return estimate.to_dict()
