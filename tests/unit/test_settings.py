from __future__ import annotations

import pytest
from pydantic import ValidationError

from stream.settings import Settings, host_port
from tests.conftest import make_settings


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLICKSCORE_BATCH_SIZE", "32")
    monkeypatch.setenv("CLICKSCORE_TOPIC_EVENTS", "shop.events")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.batch_size == 32
    assert settings.topic_events == "shop.events"


def test_rearm_threshold_must_sit_below_the_alert_threshold() -> None:
    with pytest.raises(ValidationError, match="churn_rearm_threshold"):
        make_settings(churn_alert_threshold=0.5, churn_rearm_threshold=0.7)


def test_broker_servers_from_faust_urls() -> None:
    settings = make_settings(broker_url="kafka://a:9092;kafka://b:9093")
    assert settings.broker_servers == "a:9092,b:9093"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("kafka://localhost:9092", ("localhost", 9092)),
        ("postgresql+asyncpg://user:pw@db:5433/x", ("db", 5433)),
    ],
)
def test_host_port(address: str, expected: tuple[str, int]) -> None:
    assert host_port(address) == expected


def test_for_run_gives_topics_and_groups_of_its_own() -> None:
    base = make_settings()
    run = base.for_run("demo-1", table_store="memory://")
    assert (run.topic_events, run.topic_dead_letter) == ("demo-1.events", "demo-1.dead-letter")
    assert (run.consumer_group, run.actions_group) == ("demo-1", "demo-1-actions")
    assert run.table_store == "memory://" and run.broker_url == base.broker_url


def test_as_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    original = make_settings(batch_size=7, webhook_url="http://127.0.0.1:1/hook")
    for name, value in original.as_environment().items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == original  # type: ignore[call-arg]


def _help(*command: str) -> None:
    from stream.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])


def test_each_command_help_names_only_the_settings_it_reads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _help("worker")
    worker = capsys.readouterr().out
    _help("actions")
    actions = capsys.readouterr().out
    _help("dlq", "replay")
    dlq = capsys.readouterr().out
    assert "CLICKSCORE_TRITON_GRPC_URL" in worker and "CLICKSCORE_WEBHOOK_URL" not in worker
    assert "CLICKSCORE_WEBHOOK_URL" in actions and "CLICKSCORE_TRITON_GRPC_URL" not in actions
    assert "CLICKSCORE_TOPIC_DEAD_LETTER" in dlq and "CLICKSCORE_DATABASE_URL" not in dlq


def test_a_command_loads_and_validates_only_its_own_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stream.settings import ActionsSettings, WorkerSettings

    monkeypatch.setenv("CLICKSCORE_WEBHOOK_TIMEOUT_S", "-1")  # invalid, and an actions setting
    worker = WorkerSettings(_env_file=None)  # type: ignore[call-arg]
    assert not hasattr(worker, "webhook_timeout_s")
    with pytest.raises(ValidationError, match="webhook_timeout_s"):
        ActionsSettings(_env_file=None)  # type: ignore[call-arg]


def test_every_command_chose_its_settings() -> None:
    from stream.cli import SETTINGS_OF, build_parser

    commands = {
        name
        for action in build_parser()._actions
        if hasattr(action, "choices") and isinstance(action.choices, dict)
        for name in action.choices
    }
    assert commands <= set(SETTINGS_OF)


def test_the_groups_cover_every_setting_once() -> None:
    from stream.settings import (
        ActionsSettings,
        OutcomesSettings,
        StackSettings,
        TrainerSettings,
        WorkerSettings,
    )

    deployables = (
        WorkerSettings,
        ActionsSettings,
        TrainerSettings,
        StackSettings,
        OutcomesSettings,
    )
    covered = set().union(*(set(cls.model_fields) for cls in deployables))
    assert covered == set(Settings.model_fields)
