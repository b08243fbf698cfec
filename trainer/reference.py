"""A version's reference distributions: what its scores and the behaviour features it reads
look like on validation data, scored the way the worker scores (stream/contract/drift.py).

    clickscore model reference [--version N | --all]

Validation data: synthetic users of the demo's size (300 users, 7 days) generated with the
validation seeds (2 and 3: those `clickscore model head` picks the churn threshold on, never
trained on), folded through the worker's `apply_event`, and scored at every time the worker
scores them: after each event, and at each silence level it re-scores a quiet user at
(trainer/labels/scoring_points.py `scoring_points`), a silent point with the silence as one more
row, as stream/scoring/idle.py sends it. Each version is scored in-process by exactly what
Triton serves (stream/serving/version.py `ServedVersion`, through trainer/export `load`). A
silent re-score keeps its last event's anomaly, so the anomaly reference counts event points
only, as the worker does; a score the version does not serve (NaN) has no reference at all,
so the worker's drift gauges have no series for it.

The reference also carries the version's churn alert promise: the validation precision its
threshold was picked at and the number of alerts behind it (model_config.json
alert_thresholds.churn), which the outcomes job compares realised precision with.

Written as `reference.json` beside the version's other files. `clickscore train` writes one for
every version it exports, from that version's own validation examples
(`validation_reference`), and `clickscore model head` for the version it writes; this command
gives one to versions exported before that.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from stream.contract.drift import REFERENCE_FILE, ChurnPromise, Histogram, Reference
from stream.contract.features import NAMES, stack_features
from stream.contract.state import UserState, stack_padded
from stream.datasets.synthetic import SyntheticConfig
from trainer.export import load, read_meta, tokenisation
from trainer.labels.scoring_points import ScoringRules, scoring_points, synthetic_users
from trainer.labels.sequences import Examples

VALIDATION_SEEDS = (2, 3)
USERS, DAYS = 300, 7  # the demo's size (stream/demo/run.py)
MOST_ROWS = 20_000  # enough for 30 bins; bounds the in-process scoring time


def scoring_rows(
    folder: Path, seeds: tuple[int, ...] = VALIDATION_SEEDS, most_rows: int = MOST_ROWS
) -> tuple[list[UserState], list[int], list[int]]:
    """States, scoring times and silences (0 after an event) of the validation users, at
    most `most_rows` of them (a seeded sample)."""
    meta = read_meta(folder)
    vocab, length = tokenisation(meta)
    rows: list[tuple[UserState, int, int]] = []
    for seed in seeds:
        by_user, _, end_ms = synthetic_users(SyntheticConfig(users=USERS, days=DAYS, seed=seed))
        for user in sorted(by_user):
            for point in scoring_points(by_user[user], vocab, length, end_ms, ScoringRules()):
                rows.append((point.state, point.at_ms, point.at_ms - point.state.last_ts_ms))
    if len(rows) > most_rows:
        rows = random.Random(0).sample(rows, most_rows)
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def version_reference(folder: Path, seeds: tuple[int, ...] = VALIDATION_SEEDS) -> Reference:
    """An exported version's reference, on synthetic validation users (module docstring)."""
    from stream.scoring.idle import silence_tokens

    meta = read_meta(folder)
    vocab, length = tokenisation(meta)
    states, at_ms, silent_ms = scoring_rows(folder, seeds)
    tokens = stack_padded(states, length)
    silent = np.flatnonzero(np.asarray(silent_ms) > 0)
    if silent.size:
        tokens[silent] = silence_tokens(
            [states[i] for i in silent], [silent_ms[i] for i in silent], vocab, length
        )
    features = stack_features(states, at_ms, vocab) if "feature_head" in meta else None
    version = load(folder)
    scored = [
        version.score(tokens[i : i + 1024].astype(np.int64), None, part, k=0)
        for i in range(0, len(tokens), 1024)
        for part in [None if features is None else features[i : i + 1024]]
    ]
    churn, purchase, anomaly = (
        np.concatenate([s[name][:, 0] for s in scored]).astype(np.float64)
        for name in ("CHURN", "PURCHASE", "ANOMALY")
    )
    anomaly[silent] = np.nan  # a silent re-score keeps its last event's anomaly
    source = {
        "data": "synthetic validation users",
        "users": USERS,
        "days": DAYS,
        "seeds": list(seeds),
        "rows": len(states),
        "silent_rows": int(silent.size),
    }
    return reference_of(folder.name, meta, (churn, purchase, anomaly), features, source)


def validation_reference(folder: Path, model: Any, validation: Examples) -> Reference:
    """A version `clickscore train` just exported, on its own validation examples (the
    network scores churn and purchase: no feature head, so no features are read)."""
    from trainer.fit.encoder_training import predict

    scored = predict(model, validation.tokens, top_items=False)
    source = {"data": "the version's validation examples", "rows": len(validation)}
    scores = (scored["churn"], scored["purchase"], scored["anomaly"])
    return reference_of(folder.name, read_meta(folder), scores, None, source)


def reference_of(
    version: str,
    meta: dict[str, Any],
    scores: tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike],
    features: npt.NDArray[np.floating[Any]] | None,
    source: dict[str, Any],
) -> Reference:
    named = zip(("churn_risk", "purchase_intent", "anomaly"), scores, strict=True)
    return Reference(
        version=version,
        # A score with no finite value is one the version does not serve: no reference.
        scores={
            name: Histogram.of(values)
            for name, values in named
            if np.isfinite(np.asarray(values, dtype=np.float64)).any()
        },
        features={}
        if features is None
        else {name: Histogram.of(features[:, i]) for i, name in enumerate(NAMES)},
        churn=churn_promise(meta),
        source={**source, "written_by": "trainer/reference.py"},
    )


def churn_promise(meta: dict[str, Any]) -> ChurnPromise | None:
    """The validation precision the version's churn threshold was picked at, if any."""
    churn = meta.get("alert_thresholds", {}).get("churn", {})
    if churn.get("threshold") is None or churn.get("validation_precision") is None:
        return None
    return ChurnPromise(float(churn["validation_precision"]), int(churn["validation_alerts"]))


def write_reference(folder: Path, reference: Reference | None = None) -> Path:
    """reference.json in the version folder (`version_reference` when none is given)."""
    path = folder / REFERENCE_FILE
    reference = reference or version_reference(folder)
    path.write_bytes(orjson.dumps(reference.to_dict(), option=orjson.OPT_INDENT_2))
    return path
