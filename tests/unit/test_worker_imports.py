"""The worker installs and runs without torch: nothing on its path may import it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import stream.cli, stream.worker.main, stream.ops.actions, stream.ops.replay
stream.cli.build_parser()
heavy = sorted(m for m in ("torch", "transformers", "sklearn", "peft") if m in sys.modules)
print(",".join(heavy))
"""


def test_the_worker_and_the_cli_do_not_import_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
