"""Held-out metrics for the model and its baselines.

churn / purchase  ROC-AUC, PR-AUC, log-loss, expected calibration error (10 bins), against
                  logistic regression and gradient boosting on RFM features (data.FEATURES)
anomaly           precision / recall / ROC-AUC per injected kind, against the burst rule
                  (state.rate_per_s >= burst_events_per_s, as stream/scoring/alerts.py)
next click        HR@20 / MRR@20 over hashed ITEM BUCKETS (the model predicts buckets, so
                  the popularity and item-kNN baselines are scored on buckets too)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stream.contract.events import Event
from stream.contract.state import UserState, apply_event, stack_padded
from stream.contract.tokenizer import Vocabulary
from trainer.labels.sequences import Examples, NextClicks

K = 20


def expected_calibration_error(
    y: npt.NDArray[np.floating[Any]], p: npt.NDArray[np.floating[Any]]
) -> float:
    bins = np.minimum((p * 10).astype(int), 9)
    total = 0.0
    for b in range(10):
        inside = bins == b
        if inside.any():
            total += inside.sum() / len(p) * abs(float(y[inside].mean() - p[inside].mean()))
    return total


def classification_metrics(
    y: npt.NDArray[np.floating[Any]], p: npt.NDArray[np.floating[Any]]
) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    both = 0 < y.sum() < len(y)
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "ece": expected_calibration_error(y, p),
        "positives": float(y.mean()),
    }


def baselines(
    train: Examples, test: Examples, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """RFM-feature baselines per task: {model: {task: metrics}}."""
    models = {
        "rfm_logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "rfm_gbm": lambda: HistGradientBoostingClassifier(random_state=seed),
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, build in models.items():
        out[name] = {}
        for task in ("churn", "purchase"):
            y = getattr(train, task)
            if not 0 < y.sum() < len(y):
                continue
            fitted = build().fit(train.features, y)  # type: ignore[no-untyped-call]
            scores = fitted.predict_proba(test.features)[:, 1]
            out[name][task] = classification_metrics(getattr(test, task), scores)
    return out


@dataclass
class AnomalyCases:
    tokens: npt.NDArray[np.int64]
    rate_per_s: npt.NDArray[np.float64]
    kind: list[str]  # "normal" or the injected anomaly kind


def anomaly_cases(
    by_user: Mapping[str, Sequence[Event]],
    anomaly_start: Mapping[str, tuple[str, int] | None],
    vocab: Vocabulary,
    length: int,
    per_user: int = 4,
) -> AnomalyCases:
    """States at the last `per_user` events of each user; an anomalous user's after the
    anomaly started are labelled with its kind, every other state is normal."""
    tokens: list[npt.NDArray[np.int32]] = []
    rates: list[float] = []
    kinds: list[str] = []
    for user in sorted(by_user):
        events = by_user[user]
        truth = anomaly_start.get(user)
        state: UserState | None = None
        for i, event in enumerate(events):
            state, _ = apply_event(state, event, vocab, length)
            if i < len(events) - per_user:
                continue
            tokens.append(stack_padded([state], length)[0])
            rates.append(state.rate_per_s)
            anomalous = truth is not None and event.ts_ms >= truth[1]
            kinds.append(truth[0] if anomalous and truth else "normal")
    return AnomalyCases(
        np.array(tokens, dtype=np.int64).reshape(-1, length, 6), np.array(rates), kinds
    )


def anomaly_metrics(
    cases: AnomalyCases, scores: npt.NDArray[np.floating[Any]], threshold: float, burst_per_s: float
) -> dict[str, dict[str, float]]:
    kinds = np.array(cases.kind)
    normal = kinds == "normal"
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(cases.kind) - {"normal"}):
        this = kinds == kind
        use = this | normal
        for name, s, t in (
            ("model", scores, threshold),
            ("burst_rule", cases.rate_per_s, burst_per_s),
        ):
            flagged = s >= t
            tp = int((flagged & this).sum())
            fp = int((flagged & normal).sum())
            out[f"{kind}/{name}"] = {
                "precision": tp / (tp + fp) if tp + fp else float("nan"),
                "recall": tp / int(this.sum()),
                "roc_auc": float(roc_auc_score(this[use], s[use])),
                "cases": float(this.sum()),
            }
    return out


def ranking_metrics(top: npt.NDArray[np.int64], target: npt.NDArray[np.int64]) -> dict[str, float]:
    hits = top[:, :K] == target[:, None]
    found = hits.any(axis=1)
    rank = hits.argmax(axis=1) + 1
    return {
        f"hr@{K}": float(found.mean()),
        f"mrr@{K}": float(np.where(found, 1.0 / rank, 0.0).mean()),
        "cases": float(len(target)),
    }


def popularity_top(train: Sequence[Sequence[int]], n: int) -> npt.NDArray[np.int64]:
    counts = Counter(i for session in train for i in session)
    top = [i for i, _ in counts.most_common(K)]
    return np.tile(np.array(top + [-1] * (K - len(top)), dtype=np.int64), (n, 1))


def item_knn_top(train: Sequence[Sequence[int]], test: NextClicks) -> npt.NDArray[np.int64]:
    """Session co-occurrence of the last clicked item (cosine), padded with popularity."""
    pair: dict[int, Counter[int]] = defaultdict(Counter)
    support: Counter[int] = Counter()
    for session in train:
        unique = set(session)
        support.update(unique)
        for a in unique:
            pair[a].update(unique - {a})
    popular = [i for i, _ in Counter(i for s in train for i in s).most_common(K)]
    rows = []
    for prefix in test.prefixes:
        last = prefix[-1]
        neighbours = sorted(
            pair[last].items(),
            key=lambda kv: -kv[1] / np.sqrt(support[last] * support[kv[0]]),
        )
        top = [i for i, _ in neighbours[:K]]
        top += [i for i in popular if i not in top][: K - len(top)]
        rows.append(top + [-1] * (K - len(top)))
    return np.array(rows, dtype=np.int64)
