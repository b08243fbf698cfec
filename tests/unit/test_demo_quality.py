"""The demo report's served-quality section and terminal lines, from plain figures."""

from __future__ import annotations

from stream.demo.quality import Psi, ServedQuality, quality_section, summary_lines


def _quality() -> ServedQuality:
    return ServedQuality(
        churn=[
            {
                "model_version": "6",
                "treated": True,
                "alerts": 40,
                "known": 30,
                "stayed_away": 18,
                "returned": 12,
                "churners": 50,
                "caught": 20,
            }
        ],
        calibration=[
            {
                "model_version": "6",
                "decile": 9,
                "predictions": 10,
                "purchases": 7,
                "mean_score": 0.93,
            }
        ],
        promised={"6": (0.60, 0.07)},
        psi=[
            Psi("6", "score", "churn_risk", 0.04),
            Psi("6", "score", "purchase_intent", 0.31),
            Psi("6", "feature", "log_rate_per_hour", 1.2),
        ],
    )


def test_the_section_shows_realised_against_promised_precision_and_each_psi() -> None:
    html = quality_section(_quality())
    assert "Served quality" in html
    # 18 of 30 decided alerts stayed away; 20 of 50 who stopped were caught.
    assert '<td class="num">0.60</td>' in html and "0.60 ± 0.07" in html
    assert "Recall of v6: 0.40: of the 50 users who stopped" in html
    assert "0.9–1.0" in html and '<td class="num">0.70</td>' in html
    assert "0.040 (stable)" in html
    assert "0.310 (significant)" in html
    assert "feature log_rate_per_hour" in html and "1.200 (significant)" in html


def test_the_terminal_lines_say_the_same() -> None:
    lines = "\n".join(summary_lines(_quality()))
    assert "v6 treated: 40 churn alerts, 30 decided, realised precision 0.60" in lines
    assert "v6 recall: 0.40 of 50 users who stopped had a churn alert" in lines
    assert "PSI v6 purchase_intent: 0.310 (significant)" in lines
    assert summary_lines(ServedQuality()) == ["  nothing decided yet"]
    assert "No churn alert was decided" in quality_section(ServedQuality())
    assert "No PSI" in quality_section(ServedQuality())
