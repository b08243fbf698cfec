"""The metrics Prometheus scrapes (deploy/prometheus/prometheus.yml), from the real services:
`clickscore actions` as a process on its own port, and the local stack's tritonserver."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.ops.scrape import fetch_text
from stream.settings import Settings
from stream.stack.process import free_port
from stream.worker.alerts import alert_to_json
from tests.integration.test_actions import actions_settings, churn_alert, prepare, produce
from tests.support import dashboards
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


def _samples(url: str) -> dict[str, float]:
    """Sample name -> value, summed over label sets."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(fetch_text(url)):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_triton_serves_the_metrics_the_dashboard_reads(stack_settings: Settings) -> None:
    url = f"http://127.0.0.1:{stack_settings.triton_metrics_port}/metrics"
    served = {family.name for family in text_string_to_metric_families(fetch_text(url))}
    read = {name for name in dashboards.used_metric_names() if name.startswith("nv_")}
    assert read, "the dashboard reads no Triton metric"
    assert read <= served, f"Triton does not serve {sorted(read - served)}"


async def test_actions_serves_its_counters_on_its_own_port(
    settings: Settings, tmp_path: Path
) -> None:
    service_settings = actions_settings(settings, actions_metrics_port=free_port())
    await prepare(service_settings)
    churn = [churn_alert(f"user-{i}") for i in range(3)]
    await produce(service_settings, [(a.user_id, alert_to_json(a)) for a in churn])
    url = f"http://127.0.0.1:{service_settings.actions_metrics_port}/metrics"

    service = WorkerProcess(service_settings, tmp_path / "actions.log", command="actions").start()
    try:
        deadline = time.monotonic() + 90
        samples: dict[str, float] = {}
        while time.monotonic() < deadline:
            assert service.alive(), f"actions died:\n{service.log_tail()}"
            try:
                samples = _samples(url)
            except OSError:  # URLError, refused, timed out
                samples = {}  # not listening yet
            if samples.get("clickscore_actions_recorded_total") == len(churn):
                break
            await asyncio.sleep(0.3)
    finally:
        service.stop()
    assert samples.get("clickscore_actions_recorded_total") == len(churn), service.log_tail()
    # No webhook is configured: nothing is POSTed, so nothing fails.
    assert samples["clickscore_webhook_failures_total"] == 0
    assert samples["clickscore_actions_delivered_total"] == 0
