"""Start and stop the local services as process groups recorded under the run directory.

A pid alone can be reused by the kernel after a crash, so each record also keeps the
process start time from /proc; `stop` only signals a process whose start time matches,
which is how `clickscore stack down` ends exactly the processes it started and no other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from stream.settings import CoreSettings


class StackError(RuntimeError):
    """A local service is missing, could not start, or is not healthy."""


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str

    @property
    def log_path(self) -> Path:
        return Path(self.log)


def _start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its closing ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def _record_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid.json"


def spawn(
    name: str, argv: Sequence[str], run_dir: Path, env: Mapping[str, str] | None = None
) -> ProcessRecord:
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # its own process group, so stop() also ends its children
        )
    record = ProcessRecord(name, proc.pid, _start_ticks(proc.pid) or 0, list(argv), str(log))
    _record_path(run_dir, name).write_text(json.dumps(asdict(record)))
    return record


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick), for a child's server."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spawn_command(settings: CoreSettings, command: str, *, name: str) -> ProcessRecord:
    """Run `clickscore COMMAND` in a child process configured with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLICKSCORE_")}
    argv = [sys.executable, "-m", "stream.cli", command]
    return spawn(name, argv, settings.run_dir, env=env | settings.as_environment())


def load(run_dir: Path, name: str) -> ProcessRecord | None:
    path = _record_path(run_dir, name)
    if not path.exists():
        return None
    return ProcessRecord(**json.loads(path.read_text()))


def peak_rss_bytes(record: ProcessRecord) -> int | None:
    """The process's peak resident set (VmHWM), while it runs."""
    try:
        for line in Path(f"/proc/{record.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_seconds(record: ProcessRecord) -> float | None:
    """The process's own CPU time so far, user + system (fields 14 and 15 of its stat)."""
    try:
        stat = Path(f"/proc/{record.pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_alive(record: ProcessRecord) -> bool:
    _reap(record.pid)
    return _start_ticks(record.pid) == record.start_ticks


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(run_dir: Path, name: str, timeout_s: float = 15.0) -> bool:
    """Stop the recorded process group; True if something of ours was running."""
    record = load(run_dir, name)
    if record is None:
        return False
    was_alive = is_alive(record)
    if was_alive:
        _signal_group(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(record) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_alive(record):
            _signal_group(record.pid, signal.SIGKILL)
            while is_alive(record):
                time.sleep(0.05)
        # Children of the group (Triton's backend stubs) may outlive the leader briefly.
        _signal_group(record.pid, signal.SIGKILL)
    _record_path(run_dir, name).unlink(missing_ok=True)
    return was_alive


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    record: ProcessRecord | None = None,
    interval_s: float = 0.2,
) -> None:
    """Poll `check` until it is true; fail with the service's log if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if record is not None and not is_alive(record):
            raise StackError(
                f"{what} exited during start-up. Last lines of {record.log}:\n"
                f"{log_tail(record.log_path)}"
            )
        if time.monotonic() > deadline:
            tail = f" Last lines of {record.log}:\n{log_tail(record.log_path)}" if record else ""
            raise StackError(f"{what} was not ready after {timeout_s:.0f} s.{tail}")
        time.sleep(interval_s)


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
