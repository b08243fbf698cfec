"""Churn and purchase on real customers: the served scorer against the baselines people use.

    model         the served configuration: the behaviour-feature head the worker's model
                  serves (trainer/fit/feature_head.py: standardised stream/contract/features.py
                  features of the state the worker would hold at the cut-off, a logistic
                  regression in the regularisation that wins on validation)
    full_history  not servable from a user state: gradient boosting (or a logistic
                  regression, when it wins on validation) over trainer.labels.cohorts.
                  BEHAVIOUR, computed from the customer's whole history, plus BG/NBD's P(alive)
                  and expected purchases
    Both pick their candidate on a validation split of the training customers only, then
    refit on all of them.
    rfm_gbdt  gradient boosting with scikit-learn's defaults on RFM features (recency, age,
              events, purchases, spend): what a team without this project would fit first
    bgnbd     BG/NBD fitted on the training customers; churn = exp(-expected purchases over
              the horizon), purchase = 1 - that
    recency   days since the last event alone

Intervals are percentile bootstraps over held-out CUSTOMERS (all of a customer's cut-offs
move together). The model's edge over each baseline is a paired bootstrap of the difference
on the same resamples: the edge is "more than the interval" when the difference's 95 %
interval lies above 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from trainer.baselines import bgnbd
from trainer.fit.feature_head import FeatureHead, pick_head
from trainer.labels.cohorts import RFM, Cohort
from trainer.labels.sequences import held_out
from trainer.thresholds import choose_threshold, precision_recall_at

Array = npt.NDArray[np.float64]
METRICS = ("roc_auc", "pr_auc")


@dataclass(frozen=True)
class ScorecardArgs:
    task: str  # "churn" or "purchase"
    heldout_fraction: float = 0.5
    validation_fraction: float = 0.25
    bootstrap: int = 1000
    alert_precision: float = 0.6
    alert_max_rate: float | None = 0.3  # TrainerSettings.churn_alert_max_rate
    seed: int = 0


def _gbdt(**params: Any) -> Callable[[], Any]:
    return lambda: HistGradientBoostingClassifier(early_stopping=False, random_state=0, **params)


def _logistic() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


class Blend:
    """The mean probability of several models, each fitted on the same rows."""

    def __init__(self, *builds: Callable[[], Any]) -> None:
        self.models = [build() for build in builds]

    def fit(self, x: Array, y: Array) -> Blend:
        for model in self.models:
            model.fit(x, y)
        return self

    def predict_proba(self, x: Array) -> Array:
        return np.asarray(np.mean([m.predict_proba(x) for m in self.models], axis=0))


_SHALLOW = _gbdt(max_iter=100, learning_rate=0.05, max_depth=2, min_samples_leaf=80)
# Candidates for the served configuration; the pick is made on validation data only.
CANDIDATES: dict[str, Callable[[], Any]] = {
    "gbdt_shallow": _SHALLOW,
    "gbdt_regularised": _gbdt(
        max_iter=300, learning_rate=0.03, min_samples_leaf=200, l2_regularization=1.0
    ),
    "gbdt_small_leaves": _gbdt(
        max_iter=200, learning_rate=0.03, max_depth=3, min_samples_leaf=40, l2_regularization=1.0
    ),
    "logistic": _logistic,
    "logistic+gbdt": lambda: Blend(_logistic, _SHALLOW),
}


def _signed_log(x: Array) -> Array:
    return np.asarray(np.sign(x) * np.log1p(np.abs(x)), dtype=np.float64)


def _bgnbd_scores(fitted: bgnbd.BgNbd, cohort: Cohort) -> tuple[Array, Array]:
    x, t_x, T = cohort.bgnbd_inputs.T
    expected = fitted.expected_purchases(cohort.horizon_weeks, x, t_x, T)
    return fitted.p_alive(x, t_x, T), expected


def _model_features(fitted: bgnbd.BgNbd, cohort: Cohort) -> Array:
    alive, expected = _bgnbd_scores(fitted, cohort)
    return _signed_log(np.column_stack([cohort.features, alive, expected]))


def _positive(task: str, expected: Array) -> Array:
    """BG/NBD's expected purchases as the task's probability (Poisson, no purchase = churn)."""
    none = np.exp(-np.clip(expected, 0, None))
    return none if task == "churn" else 1.0 - none


def _metric_pair(y: Array, s: Array) -> tuple[float, float]:
    return float(roc_auc_score(y, s)), float(average_precision_score(y, s))


def _fit_predict(build: Callable[[], Any], x: Array, y: Array, x_test: Array) -> Array:
    fitted = build().fit(x, y)
    return np.asarray(fitted.predict_proba(x_test)[:, 1], dtype=np.float64)


@dataclass
class Served:
    candidate: str
    validation: dict[str, dict[str, float]]
    scores: Array  # on the held-out rows
    validation_labels: Array
    validation_scores: Array  # the picked candidate's, fitted without the validation rows
    head: FeatureHead | None = None  # the served head; None for the full-history model


def _inner_split(train: Cohort, args: ScorecardArgs) -> tuple[Cohort, Cohort]:
    inner = np.array(
        [held_out(c, args.validation_fraction, args.seed + 1) for c in train.customers]
    )
    return train.subset(~inner), train.subset(inner)


def fit_state_head(train: Cohort, test: Cohort, args: ScorecardArgs) -> Served:
    """The served configuration: the feature head on the states' features."""
    fit_part, check = _inner_split(train, args)
    picked = pick_head(fit_part.state_features, fit_part.label, check.state_features, check.label)
    return Served(
        picked.head.candidate,
        picked.validation,
        picked.head.scores(test.state_features),
        check.label,
        picked.check_scores,
        picked.head,
    )


def fit_full_history(train: Cohort, test: Cohort, args: ScorecardArgs) -> Served:
    fit_part, check = _inner_split(train, args)
    fitted_inner = bgnbd.fit(*fit_part.bgnbd_inputs.T)
    x_fit, x_check = _model_features(fitted_inner, fit_part), _model_features(fitted_inner, check)
    validation: dict[str, dict[str, float]] = {}
    check_scores: dict[str, Array] = {}
    for name, build in CANDIDATES.items():
        check_scores[name] = _fit_predict(build, x_fit, fit_part.label, x_check)
        roc, pr = _metric_pair(check.label, check_scores[name])
        validation[name] = {"roc_auc": roc, "pr_auc": pr}
    best = max(validation, key=lambda n: validation[n]["roc_auc"] + validation[n]["pr_auc"])
    fitted = bgnbd.fit(*train.bgnbd_inputs.T)
    scores = _fit_predict(
        CANDIDATES[best],
        _model_features(fitted, train),
        train.label,
        _model_features(fitted, test),
    )
    return Served(best, validation, scores, check.label, check_scores[best])


def baseline_scores(train: Cohort, test: Cohort, task: str, seed: int) -> dict[str, Array]:
    rfm = [train.column(n) for n in RFM], [test.column(n) for n in RFM]
    fitted = bgnbd.fit(*train.bgnbd_inputs.T)
    _, expected = _bgnbd_scores(fitted, test)
    recency = test.column("recency_days")
    return {
        "rfm_gbdt": _fit_predict(
            lambda: HistGradientBoostingClassifier(random_state=seed),
            np.column_stack(rfm[0]),
            train.label,
            np.column_stack(rfm[1]),
        ),
        "bgnbd": _positive(task, expected),
        "recency": recency if task == "churn" else -recency,
    }


def _interval(values: Array) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def _ranked(scores: Array) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Descending order and, in that order, where each run of tied scores ends."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    return order, np.r_[ordered[1:] != ordered[:-1], True]


def weighted_metrics(
    y_sorted: Array, weights: Array, last_of_tie: npt.NDArray[np.bool_]
) -> tuple[Array, Array]:
    """ROC-AUC and average precision (scikit-learn's definitions, ties included) for each
    row of `weights` (rounds, n), the rows ordered by descending score: every bootstrap
    round in one pass instead of one scikit-learn call per round and metric."""
    positive = weights * y_sorted
    tp = np.cumsum(positive, axis=1)[:, last_of_tie]
    fp = np.cumsum(weights - positive, axis=1)[:, last_of_tie]
    tpr = np.hstack([np.zeros((len(weights), 1)), tp / tp[:, -1:]])
    fpr = np.hstack([np.zeros((len(weights), 1)), fp / fp[:, -1:]])
    auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    precision = tp / np.maximum(tp + fp, 1e-300)
    ap = np.sum(np.diff(tpr, axis=1) * precision, axis=1)
    return auc, ap


def bootstrap(
    y: Array,
    scores: dict[str, Array],
    customers: list[str],
    rounds: int,
    seed: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per model: point metrics and 95 % intervals; per baseline: the paired difference
    model - baseline with its interval. Each round resamples customers with replacement
    (as weights on their rows); every model is scored on the same rounds."""
    _, group = np.unique(np.array(customers), return_inverse=True)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    counts = np.stack(
        [
            np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
            for _ in range(rounds)
        ]
    )
    weights = counts[:, group].astype(np.float64)
    positives = weights @ y
    usable = (positives > 0) & (positives < weights.sum(axis=1))
    weights = weights[usable]
    draws: dict[str, Array] = {}
    for name, s in scores.items():
        order, last_of_tie = _ranked(s)
        parts = [
            np.column_stack(weighted_metrics(y[order], chunk[:, order], last_of_tie))
            for chunk in np.array_split(weights, max(1, len(weights) // 100))
        ]
        draws[name] = np.vstack(parts)
    models: dict[str, dict[str, Any]] = {}
    for name, s in scores.items():
        point = _metric_pair(y, s)
        models[name] = {}
        for i, metric in enumerate(METRICS):
            models[name][metric] = point[i]
            models[name][f"{metric}_ci95"] = _interval(draws[name][:, i])
    differences: dict[str, dict[str, Any]] = {}
    for name in scores:
        if name == "model":
            continue
        diff = draws["model"] - draws[name]
        entry: dict[str, Any] = {}
        for i, metric in enumerate(METRICS):
            low, high = _interval(diff[:, i])
            entry[metric] = models["model"][metric] - models[name][metric]
            entry[f"{metric}_ci95"] = [low, high]
            entry[f"{metric}_wins"] = bool(low > 0)
        differences[name] = entry
    return models, differences


def scorecard(cohort: Cohort, args: ScorecardArgs) -> dict[str, Any]:
    """The report `clickscore evaluate churn|purchase --json` prints."""
    test_mask = np.array([held_out(c, args.heldout_fraction, args.seed) for c in cohort.customers])
    train, test = cohort.subset(~test_mask), cohort.subset(test_mask)
    for part, name in ((train, "training"), (test, "held-out")):
        if not 0 < part.label.sum() < len(part):
            raise ValueError(f"the {name} customers hold only one class; more data is needed")
    served = fit_state_head(train, test, args)
    full = fit_full_history(train, test, args)
    scores = {
        "model": served.scores,
        "full_history": full.scores,
        **baseline_scores(train, test, args.task, args.seed),
    }
    models, differences = bootstrap(test.label, scores, test.customers, args.bootstrap, args.seed)
    picked = choose_threshold(
        served.validation_labels,
        served.validation_scores,
        target_precision=args.alert_precision,
        max_alert_rate=args.alert_max_rate,
    )
    alert: dict[str, Any] = picked.to_dict()
    if picked.threshold is not None:
        alert["heldout"] = precision_recall_at(test.label, served.scores, picked.threshold)
    return {
        "task": args.task,
        "customers": len(set(test.customers)),
        "rows": len(test),
        "training_customers": len(set(train.customers)),
        "base_rate": float(test.label.mean()),
        "horizon_weeks": cohort.horizon_weeks,
        "bootstrap_rounds": args.bootstrap,
        "models": models,
        "differences": differences,
        "served": {
            "candidate": served.candidate,
            "features": "user state (stream/contract/features.py)",
            "validation": served.validation,
        },
        "full_history": {"candidate": full.candidate, "validation": full.validation},
        "alert": alert,
    }
