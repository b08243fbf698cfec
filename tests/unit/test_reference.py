"""Every served version carries reference distributions the worker can read, written by
`clickscore model reference` (trainer/reference.py), with the churn promise of its
model_config.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream.contract.drift import REFERENCE_FILE, SCORES, Reference
from stream.contract.features import NAMES
from stream.settings import PROJECT_ROOT
from trainer.reference import churn_promise, reference_of

VERSIONS = sorted(
    p for p in (PROJECT_ROOT / "model_repo" / "clickscore").iterdir() if p.name.isdigit()
)


@pytest.mark.parametrize("folder", VERSIONS, ids=lambda p: p.name)
def test_each_version_folder_has_a_reference_of_what_it_serves_and_reads(folder: Path) -> None:
    reference = Reference.from_dict(orjson.loads((folder / REFERENCE_FILE).read_bytes()))
    meta = json.loads((folder / "model_config.json").read_text())
    assert reference.version == folder.name
    # A score the version does not serve (NaN) has no reference, so no drift series.
    unserved = {"anomaly"} if meta["served"]["anomaly"] is None else set()
    assert tuple(reference.scores) == tuple(s for s in SCORES if s not in unserved)
    # Only a version with a feature head reads behaviour features.
    assert tuple(reference.features) == (NAMES if "feature_head" in meta else ())
    for histogram in [*reference.scores.values(), *reference.features.values()]:
        assert histogram.total > 1000 and len(histogram.counts) <= 30
        assert np.all(np.diff(histogram.edges) > 0)
    assert reference.churn == churn_promise(meta)
    assert reference.source["written_by"] == "trainer/reference.py"


def test_the_served_versions_churn_promise_is_its_validation_precision() -> None:
    meta = json.loads((VERSIONS[-1] / "model_config.json").read_text())
    promise = churn_promise(meta)
    assert promise is not None
    churn = meta["alert_thresholds"]["churn"]
    assert promise.precision == churn["validation_precision"]
    assert promise.alerts == churn["validation_alerts"]
    assert churn_promise({"alert_thresholds": {"churn": {"threshold": None}}}) is None


def test_a_reference_bins_every_score_and_feature_it_is_given() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, len(NAMES))).astype(np.float32)
    scores = (rng.random(500), rng.random(500), rng.random(500))
    reference = reference_of("9", {}, scores, features, {"data": "test"})
    assert reference.churn is None
    assert [h.total for h in reference.scores.values()] == [500, 500, 500]
    assert set(reference.features) == set(NAMES)
