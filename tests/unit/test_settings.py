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
