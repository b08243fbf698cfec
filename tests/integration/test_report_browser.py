"""The demo's HTML report, opened in a real headless browser (Debian's chromium).

It builds a report from small synthetic inputs, takes a screenshot, and reads the DOM after
the page loaded: the page's own script marks <body data-images-ok="true"> only when every
<img> decoded. A missing chromium fails the test with how to install it.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from stream.demo.report import (
    FlaggedUser,
    ModelEvaluation,
    ReportData,
    precision_recall,
    write_report,
)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: run `make browser` "
            "(apt-get install -y chromium), then rerun the test",
            pytrace=False,
        )
    return path


def _report(directory: Path) -> Path:
    rng = random.Random(7)
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    data = ReportData(
        title="clickscore demo (browser test)",
        generated_at=now,
        facts=[("events replayed", "2,000 of 50 users"), ("dead letters", "1")],
        scores={
            key: [rng.betavariate(2, 5) for _ in range(50)]
            for key in ("churn_risk", "purchase_intent", "anomaly")
        },
        alerts=[
            (now - timedelta(hours=rng.uniform(0, 48)), rng.choice(("churn", "anomaly", "burst")))
            for _ in range(30)
        ],
        latencies_s=[rng.lognormvariate(-3.0, 0.8) for _ in range(400)],
        latency_source="synthetic latencies",
        accuracy=[precision_recall("churn alerts vs churners", {"u1", "u2"}, {"u1", "u3"}, 50)],
        model=ModelEvaluation("clickscore", "2", {"mean_roc_auc": 0.61, "churn_roc_auc": 0.6}),
        flagged=[
            FlaggedUser(
                "user-17",
                "churn",
                0.91,
                0.74,
                "churn risk 0.91 crossed 0.74 after 2.0 d of silence",
                ["e-7", "e-8", "e-9"],
                "churner",
            ),
            FlaggedUser("bot-3", "burst", 48.0, 20.0, "burst of 48.0 events/s", ["b-1"], "bot"),
        ],
    )
    return write_report(data, directory)


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    page = _report(tmp_path / "report")
    url = page.resolve().as_uri()

    dom = _run(chromium, tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:2000]
    assert 'data-images-ok="true"' in body.group(0), body.group(0)
    assert 'data-images-decoded="3"' in body.group(0), body.group(0)
    assert dom.stdout.count("<img") == 3
    for title in ("Score distributions", "Alert timeline", "Event-triggered score latency"):
        assert title in dom.stdout
    assert "mean_roc_auc" in dom.stdout
    # The flagged users, each with why: score, threshold, reason and last events.
    flagged = dom.stdout[dom.stdout.index('id="flagged-users"') :]
    for text in ("user-17", "0.91", "0.74", "after 2.0 d of silence", "e-7, e-8, e-9", "bot-3"):
        assert text in flagged, text
    assert "base rate" in dom.stdout

    shot = tmp_path / "report.png"
    result = _run(
        chromium, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import matplotlib.image

    pixels = np.asarray(matplotlib.image.imread(shot))
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1])[::7], axis=0)
    assert len(colours) > 50, f"the screenshot has only {len(colours)} colours"
    # The figures' bars: the score histograms' blue and the latency histogram's orange.
    rgb = pixels[..., :3]
    blue = np.all(np.abs(rgb - np.array([0x3B, 0x6E, 0xA8]) / 255) < 0.03, axis=-1)
    orange = np.all(np.abs(rgb - np.array([0xC0, 0x70, 0x3A]) / 255) < 0.03, axis=-1)
    assert blue.sum() > 5_000 and orange.sum() > 5_000
