"""The demo report's pure parts: accuracy rows, HTML building, served-model evaluation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.demo.report import (
    Figure,
    ModelEvaluation,
    ReportData,
    build_html,
    precision_recall,
    quantile,
)
from stream.demo.report_data import served_model_evaluation

PNG = b"\x89PNG\r\n\x1a\nfake"


def _data(model: ModelEvaluation) -> ReportData:
    return ReportData(
        title="demo <run>",
        generated_at=datetime(2026, 11, 23, 12, 0, tzinfo=UTC),
        facts=[("events replayed", "1,000")],
        scores={"churn_risk": [0.1], "purchase_intent": [0.2], "anomaly": [0.3]},
        alerts=[],
        latencies_s=[0.01],
        latency_source="test",
        accuracy=[precision_recall("churn alerts vs churners", {"a", "b"}, {"a", "c", "d"})],
        model=model,
    )


def test_precision_recall() -> None:
    row = precision_recall("x", {"a", "b"}, {"a", "c", "d"})
    assert (row.precision, row.recall) == (0.5, pytest.approx(1 / 3))
    assert row.base_rate is None
    assert precision_recall("x", {"a"}, {"a", "c", "d"}, population=12).base_rate == 0.25
    empty = precision_recall("x", set(), {"a"})
    assert empty.precision is None and empty.recall == 0.0


def test_quantile() -> None:
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([0.0, 10.0], 0.99) == pytest.approx(9.9)


def test_html_embeds_figures_with_alt_text_and_escapes_text() -> None:
    figure = Figure("Score distributions", 'scores "alt"', PNG, "caption")
    page = build_html(_data(ModelEvaluation("clickscore", "2", {"mean_roc_auc": 0.61})), [figure])
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="data:image/png;base64,iVBORw0KGgpmYWtl"' in page
    assert 'alt="scores &quot;alt&quot;"' in page
    assert "demo &lt;run&gt;" in page and "<run>" not in page
    assert "imagesOk" in page  # the browser test's hook
    assert "<td>mean_roc_auc</td>" in page and "0.6100" in page
    assert "0.50" in page and "0.33" in page  # precision and recall


def test_html_says_when_the_model_has_no_metrics() -> None:
    page = build_html(_data(ModelEvaluation("clickscore", "1", None)), [])
    assert "records no evaluation metrics" in page
    page = build_html(_data(ModelEvaluation("clickscore", None, None)), [])
    assert "No version of clickscore was found" in page


def test_served_model_is_the_highest_version(tmp_path: Path) -> None:
    for version, meta in (("1", {"metrics": {"auc": 0.5}}), ("10", {"metrics": {"auc": 0.7}})):
        folder = tmp_path / "clickscore" / version
        folder.mkdir(parents=True)
        (folder / "model_config.json").write_text(json.dumps(meta))
    (tmp_path / "clickscore" / "2").mkdir()  # no model_config.json: not the highest anyway
    evaluation = served_model_evaluation(tmp_path, "clickscore")
    assert evaluation == ModelEvaluation("clickscore", "10", {"auc": 0.7})
    (tmp_path / "clickscore" / "11").mkdir()
    assert served_model_evaluation(tmp_path, "clickscore").metrics is None
    assert served_model_evaluation(tmp_path, "other").version is None


def test_flagged_users_are_listed_with_why() -> None:
    from dataclasses import replace

    from stream.demo.report import FlaggedUser

    data = replace(
        _data(ModelEvaluation("clickscore", "2", None)),
        flagged=[
            FlaggedUser("u<1>", "churn", 0.9, 0.7, "churn risk 0.90", ["e1", "e2"], "churner")
        ],
    )
    page = build_html(data, [])
    section = page[page.index('id="flagged-users"') :]
    assert "u&lt;1&gt;" in section and "0.90" in section and "0.70" in section
    assert "e1, e2" in section and "churner" in section
    assert "No user was flagged" in build_html(_data(ModelEvaluation("m", "1", None)), [])
