"""Bad input never replaces a good model: each run below ends in a clear refusal, with the
serving version's folder byte for byte as it was, no new version in the repository, no
half-written folder left in the store, and no model_versions row for a version that was
never made. Real PostgreSQL and a real broker (the suite's stack); Triton is not needed:
nothing is loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.contract.events import event_to_json
from stream.datasets.synthetic import SyntheticConfig, generate
from stream.db import migrate
from stream.settings import PROJECT_ROOT, Settings
from stream.stack.process import free_port
from tests.conftest import make_settings
from tests.support.kafka import create_topics, produce
from trainer import publish
from trainer.history import HistoryRefused, Source
from trainer.pipeline import TrainArgs, run

# The first test also waits for the module's good version: a pipeline run of minutes on a
# loaded 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
SMALL = Source(users=300, days=7, seed=3)


@pytest.fixture(scope="module")
def good_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository serving one format-2 version made by the pipeline (about a minute)."""
    root = tmp_path_factory.mktemp("good")
    settings = make_settings(model_repo=root / "repo", model_store=root / "store")
    result = run(settings, TrainArgs(source=SMALL, tiny=True, promote=False))
    assert result.folder is not None
    publish.move_into_repository(settings, result.folder)
    return root / "repo"


@pytest.fixture
def trainer(settings: Settings, good_version: Path, tmp_path: Path) -> Settings:
    """This test's settings: its own database (migrated) and topics, its own copy of the
    repository, an empty store, and a Triton address nothing listens on."""
    shutil.copytree(good_version, tmp_path / "repo", symlinks=True)
    own = make_settings(
        **{
            **settings.model_dump(),
            "model_repo": tmp_path / "repo",
            "model_store": tmp_path / "store",
            "triton_http_url": f"127.0.0.1:{free_port()}",
        }
    )
    migrate.upgrade(own)
    return own


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_untouched(settings: Settings, before: dict[str, str]) -> None:
    assert snapshot(settings.model_repo) == before, "the repository changed"
    store = publish.store_dir(settings)
    leftovers = sorted(p.name for p in store.iterdir()) if store.is_dir() else []
    assert leftovers == [], f"the store holds {leftovers}"
    assert asyncio.run(publish.table(settings)) == []


def refused(settings: Settings, source: Source) -> str:
    before = snapshot(settings.model_repo)
    with pytest.raises(HistoryRefused) as raised:
        run(settings, TrainArgs(source=source, tiny=True))
    assert_untouched(settings, before)
    return raised.value.reason


def test_an_empty_topic_is_refused(trainer: Settings) -> None:
    asyncio.run(create_topics(trainer, [trainer.topic_events], 1))
    reason = refused(trainer, Source(data="topic"))
    assert reason == f"topic {trainer.topic_events}: the history is empty"


def test_a_topic_of_garbage_is_refused_with_the_counts(trainer: Settings) -> None:
    asyncio.run(create_topics(trainer, [trainer.topic_events], 1))
    garbage = [b"not json", b"{}", b'{"user_id": 7}', b"[1, 2", b"\xff\xfe"] * 8
    asyncio.run(produce(trainer, trainer.topic_events, [(None, g) for g in garbage]))
    reason = refused(trainer, Source(data="topic"))
    assert "every one of 40 messages was invalid" in reason, reason


def test_a_history_shorter_than_two_churn_horizons_is_refused(trainer: Settings) -> None:
    reason = refused(trainer, Source(users=300, days=4, seed=3))
    assert "less than two churn horizons (6.0 days)" in reason, reason


def test_too_few_users_are_refused(trainer: Settings) -> None:
    reason = refused(trainer, Source(users=20, days=7, seed=3))
    assert "fewer than CLICKSCORE_TRAIN_MIN_USERS" in reason, reason


def test_labels_of_one_class_are_refused(trainer: Settings, tmp_path: Path) -> None:
    """A shop whose history holds no purchase: no purchase model can be fitted."""
    events, _ = generate(SyntheticConfig(users=300, days=7, seed=3))
    path = tmp_path / "no-purchases.jsonl"
    with path.open("wb") as out:
        for event in events:
            if event.event_type != "purchase":
                out.write(event_to_json(event) + b"\n")
    reason = refused(trainer, Source(data="jsonl", path=path))
    assert reason.startswith("purchase labels of the train users are all of one class"), reason


def test_a_file_of_garbage_is_refused_with_the_counts(trainer: Settings, tmp_path: Path) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"not json\n{}\n" * 10)
    reason = refused(trainer, Source(data="jsonl", path=path))
    assert "every one of 20 rows was invalid (bad_json 10, missing_user_id 10)" in reason, reason


def test_nan_features_are_refused_before_fitting(
    trainer: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid events cannot make a NaN feature (the event contract rejects non-finite
    prices), so a bug is injected where features are computed: the fit step must refuse
    rather than fit a head on NaN."""
    from stream.contract.features import stack_features as real

    def with_a_bug(states: Any, times: Any, vocab: Any) -> Any:
        x = real(states, times, vocab)
        x[::7, 11] = np.nan  # log_spend of every 7th row
        return x

    monkeypatch.setattr("trainer.labels.points.stack_features", with_a_bug)
    reason = refused(trainer, SMALL)
    assert "rows have NaN or infinite features (log_spend)" in reason, reason


def test_a_run_killed_mid_training_leaves_the_repository_and_the_store_clean(
    trainer: Settings,
) -> None:
    before = snapshot(trainer.model_repo)
    store = publish.store_dir(trainer)
    env = {
        **os.environ,
        "CLICKSCORE_MODEL_REPO": str(trainer.model_repo),
        "CLICKSCORE_MODEL_STORE": str(trainer.model_store),
        "CLICKSCORE_DATABASE_URL": trainer.database_url,
        "CLICKSCORE_TRITON_HTTP_URL": trainer.triton_http_url,
    }
    command = [sys.executable, "-m", "stream.cli", "train", "--data", "synthetic", "--tiny"]
    command += ["--users", "300", "--days", "7", "--seed", "3"]
    process = subprocess.Popen(
        command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # Killed while its candidate is half made: the export's staging folder exists.
    deadline = time.monotonic() + 600
    while not (store.is_dir() and any(store.glob(".*.tmp"))):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the run never reached its export"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stale = sorted(p.name for p in store.iterdir())
    assert stale and all(name.startswith(".") for name in stale), stale
    assert snapshot(trainer.model_repo) == before
    # The next run (refused here: too short) removes what the killed one left.
    with pytest.raises(HistoryRefused):
        run(trainer, TrainArgs(source=Source(users=300, days=4, seed=3), tiny=True))
    assert_untouched(trainer, before)
