"""Run `clickscore worker` as a real process, configured through the environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stream.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSCORE_")}
    return env | settings.as_environment()


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, command: str = "worker") -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", self.command],
            env=settings_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Until this run's Faust worker logs that it is ready (joined, recovered, seeked)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.alive(), f"worker died:\n{self.log_tail()}"
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                if b"Worker]: Ready" in log.read():  # Faust's worker, or our subclass of it
                    return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout_s} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final commit."""
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None and self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> float:
        """SIGTERM, then wait for the process to exit by itself; the seconds it took."""
        assert self.proc is not None and self.alive(), self.log_tail()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"no exit {timeout_s} s after SIGTERM:\n{self.log_tail()}"
            ) from None
        return time.monotonic() - started

    def task_dump(self, wait_s: float = 5.0) -> str:
        """Every thread's and asyncio task's stack, as the worker writes it on SIGUSR1
        (mode's worker does); for the message of a test that found the worker stuck."""
        if not self.alive():
            return "(worker not running: no task dump)"
        assert self.proc is not None
        start = self.log_path.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + wait_s
        text = ""
        while time.monotonic() < deadline:
            time.sleep(0.5)
            with self.log_path.open("rb") as log:
                log.seek(start)
                grown = log.read().decode(errors="replace")
            if "TASKS" in grown and grown == text:  # written in full: it stopped growing
                break
            text = grown
        return text

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
