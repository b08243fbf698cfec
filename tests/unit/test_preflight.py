"""Start-up checks: clear errors naming the setting, and stale local table files found."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from stream.settings import PROJECT_ROOT
from stream.stack.process import free_port
from stream.worker.preflight import (
    StartupError,
    check_port_free,
    check_reachable,
    stale_partitions,
)
from tests.conftest import make_settings
from tests.support.worker import settings_env


def test_a_port_in_use_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match="CLICKSCORE_METRICS_PORT"):
            check_port_free("127.0.0.1", port, "CLICKSCORE_METRICS_PORT")
    check_port_free("127.0.0.1", port, "CLICKSCORE_METRICS_PORT")  # free again


def test_an_unreachable_service_names_the_setting() -> None:
    port = free_port()
    with pytest.raises(StartupError, match=f"127.0.0.1:{port}.*CLICKSCORE_BROKER_URL"):
        check_reachable(f"127.0.0.1:{port}", "CLICKSCORE_BROKER_URL", "the broker", wait_s=0)


def test_the_worker_command_reports_a_taken_port_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(metrics_port=taken.getsockname()[1], startup_wait_s=0)
        done = subprocess.run(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=settings_env(settings),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert "CLICKSCORE_METRICS_PORT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_local_state_newer_than_the_changelog_is_stale() -> None:
    # Partition 0 applied offset 9, which a broker holding 10 records has; partition 1
    # applied 40 of a changelog that now ends at 3; partition 2's changelog is gone.
    assert stale_partitions({0: 9, 1: 40, 2: 5}, {0: 10, 1: 3}) == [1, 2]
    assert stale_partitions({0: 9}, {0: 10}) == []
