"""Fetching a worker's Prometheus metrics text over HTTP (parsed by `stream.ops.promstats`)."""

from __future__ import annotations

import urllib.request

from stream.settings import WorkerSettings


def metrics_url(settings: WorkerSettings) -> str:
    return f"http://{settings.metrics_host}:{settings.metrics_port}/metrics"


def fetch_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=1.0) as response:
        body: bytes = response.read()
    return body.decode()
