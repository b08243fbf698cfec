"""Fixtures: the real local stack, started once per test run on free loopback ports.

Each test gets its own topic names and its own database. A service that cannot start
fails the run with the reason and how to install it; nothing is skipped.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.settings import PROJECT_ROOT, Settings
from stream.stack import local, postgres
from stream.stack.process import StackError, free_port

# The machine's PostgreSQL server (or a cluster the stack starts at this address).
TEST_DATABASE_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
FIXTURES = Path(__file__).parent / "fixtures"
PROJECT_MODELS = PROJECT_ROOT / "model_repo"
# Served beside the real model: transparent rules whose scores the worker tests can predict.
RULES_MODEL = "clickscore-rules"
# The same rules behind a slow server (every execute sleeps first); loaded by the test using it.
SLOW_RULES_MODEL = "clickscore-rules-slow"
# The same code failing every request until its `fail` parameter is swapped to "false".
FAILING_RULES_MODEL = "clickscore-rules-failing"
RULES_VARIANTS = (SLOW_RULES_MODEL, FAILING_RULES_MODEL)


def make_settings(**overrides: Any) -> Settings:
    """Settings from code only: a developer's .env or environment must not leak into tests."""
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def _test_model_repo(root: Path) -> Path:
    """The project's model repository plus the fixture models the worker tests score with."""
    repo = root / "model_repo"
    repo.mkdir()
    for model in PROJECT_MODELS.iterdir():
        if (model / "config.pbtxt").is_file():
            (repo / model.name).symlink_to(model.resolve())
    for model in (FIXTURES / "model_repo").iterdir():
        if (model / "config.pbtxt").is_file() and model.name not in RULES_VARIANTS:
            (repo / model.name).symlink_to(model.resolve())
    # The variants are the rules model's code under their own config (a parameter each).
    fixtures = (FIXTURES / "model_repo").resolve()
    for name in RULES_VARIANTS:
        variant = repo / name
        variant.mkdir()
        (variant / "config.pbtxt").symlink_to(fixtures / name / "config.pbtxt")
        (variant / "1").symlink_to(fixtures / RULES_MODEL / "1")
    return repo


def load_model(settings: Settings, name: str) -> None:
    """Load a model through Triton's repository API (the server runs in explicit mode)."""
    url = f"http://{settings.triton_http_url}/v2/repository/models/{name}/load"
    request = urllib.request.Request(url, data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    run_dir: Path = tmp_path_factory.mktemp("stack")
    http, grpc, metrics, kafka = (free_port() for _ in range(4))
    settings = make_settings(
        broker_url=f"kafka://127.0.0.1:{kafka}",
        triton_http_url=f"127.0.0.1:{http}",
        triton_grpc_url=f"127.0.0.1:{grpc}",
        triton_metrics_port=metrics,
        database_url=f"{TEST_DATABASE_SERVER}/clickscore_test",
        run_dir=run_dir,
        model_repo=_test_model_repo(run_dir),
    )
    try:
        local.up(settings, migrate=False)
        load_model(settings, RULES_MODEL)
    except StackError as exc:
        local.down(settings)
        pytest.fail(f"The local stack could not start: {exc}", pytrace=False)
    yield settings
    local.down(settings)


@pytest.fixture
def settings(stack_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Stack settings with topics and a database of this test's own."""
    suffix = uuid.uuid4().hex[:10]
    database = f"cs_test_{suffix}"
    base = stack_settings.model_dump()
    base.update(
        topic_events=f"events-{suffix}",
        topic_scores=f"scores-{suffix}",
        topic_alerts=f"alerts-{suffix}",
        topic_dead_letter=f"dead-letter-{suffix}",
        consumer_group=f"worker-{suffix}",
        database_url=f"{TEST_DATABASE_SERVER}/{database}",
    )
    test_settings = make_settings(**base)
    postgres.ensure_database(test_settings)
    yield test_settings
    postgres.drop_database(test_settings, database)
