"""The process records behind `clickscore stack down`: stop ours, and only ours."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from stream.stack import process


def _sleeper_with_child(run_dir: Path) -> process.ProcessRecord:
    # A parent that starts a child in the same group, as tritonserver starts its stubs.
    script = "import subprocess,time; subprocess.Popen(['sleep','60']); time.sleep(60)"
    return process.spawn("sleeper", [sys.executable, "-c", script], run_dir)


def _group_members(pgid: int) -> list[int]:
    # Zombies are dead already; they wait for a reaping init that a container may not have.
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    rows = (line.split() for line in out.splitlines())
    return [int(pid) for pid, group, stat in rows if int(group) == pgid and "Z" not in stat]


def test_stop_ends_the_whole_group(tmp_path: Path) -> None:
    record = _sleeper_with_child(tmp_path)
    process.wait_until(lambda: len(_group_members(record.pid)) == 2, what="child", timeout_s=10)
    assert process.is_alive(record)
    assert process.stop(tmp_path, "sleeper") is True
    assert _group_members(record.pid) == []
    assert process.load(tmp_path, "sleeper") is None


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    record = _sleeper_with_child(tmp_path)
    try:
        # Pretend the record was written for an earlier process that had this pid.
        stale = dict(json.loads((tmp_path / "sleeper.pid.json").read_text()))
        stale["start_ticks"] = record.start_ticks - 1
        (tmp_path / "sleeper.pid.json").write_text(json.dumps(stale))
        assert process.stop(tmp_path, "sleeper") is False
        assert process.is_alive(record)
    finally:
        (tmp_path / "sleeper.pid.json").write_text(json.dumps(asdict(record)))
        process.stop(tmp_path, "sleeper")
