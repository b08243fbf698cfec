"""The worker image, checked without Docker: its user can write every path the worker writes.

Docker does not run on the machines this project is developed on, so the image is not built
here; this reads the Dockerfile instead: the user it runs as, what that user owns, and the
volume the RocksDB table files live in.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import PurePosixPath

from stream.settings import PROJECT_ROOT
from stream.worker.app import worker_folder
from tests.conftest import make_settings


def instructions() -> list[tuple[str, str]]:
    text = (PROJECT_ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    rows = [line.strip() for line in text.splitlines()]
    rows = [row for row in rows if row and not row.startswith("#")]
    return [(row.split(None, 1)[0].upper(), row.split(None, 1)[1]) for row in rows]


def image() -> tuple[str, dict[str, str], list[PurePosixPath], list[PurePosixPath], str]:
    """(user, env, folders chowned to the user, volumes, workdir) of the final image."""
    user, env, owned, volumes, workdir = "root", {}, [], [], "/"
    for name, args in instructions():
        if name == "USER":
            user = args.split(":")[0]
        elif name == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
        elif name == "WORKDIR":
            workdir = args
        elif name == "VOLUME":
            volumes += [PurePosixPath(v) for v in json.loads(args)]
        elif name == "RUN":
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:1] == ["chown"]:
                    owner = words[-2].split(":")[0]
                    owned += [PurePosixPath(words[-1])] if owner else []
                    assert owner == "clickscore", command
    return user, env, owned, volumes, workdir


def within(path: PurePosixPath, folders: list[PurePosixPath]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def test_the_worker_runs_unprivileged_and_writes_only_what_its_user_owns() -> None:
    user, env, owned, volumes, workdir = image()
    assert user == "clickscore"
    settings = make_settings(
        run_dir=env["CLICKSCORE_RUN_DIR"], model_store=env["CLICKSCORE_MODEL_STORE"]
    )
    # What the worker and the trainer create at run time.
    written = [PurePosixPath(worker_folder(settings)), PurePosixPath(settings.model_store)]
    for path in written:
        assert within(path, owned), f"{path} is not under a folder {user} owns"
        assert not within(path, [PurePosixPath(workdir)]), f"{path} is in the root-owned {workdir}"
    # The RocksDB table files outlive the container.
    assert within(PurePosixPath(worker_folder(settings)), volumes)
