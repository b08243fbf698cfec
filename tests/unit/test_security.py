"""Pseudonymised outputs, Kafka security options, and secrets that never print."""

from __future__ import annotations

import ast
import os
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.kafka_security import aiokafka_options, faust_credentials
from stream.scoring.pseudonym import Pseudonymiser
from stream.settings import PROJECT_ROOT, Settings
from stream.worker.pipeline import ScoringPipeline
from stream.worker.window import Message
from tests.conftest import make_settings
from tests.support.pipeline import ConstantScorer, MemoryTable, RecordingOutputs, view_message

NOW_MS = 1_800_000_000_000


def message(user: str, n: int) -> Message:
    return view_message(user, n, n, NOW_MS)


async def run_pipeline(
    **settings: object,
) -> tuple[MemoryTable, RecordingOutputs, RecordingOutputs]:
    table, store, kafka = MemoryTable(), RecordingOutputs(), RecordingOutputs()
    pipeline = ScoringPipeline(
        make_settings(**settings),
        table,
        ConstantScorer(churn=0.1, purchase=0.2, anomaly=1.0),  # anomaly 1.0: alerts
        store,
        kafka,  # type: ignore[arg-type]
        clock=lambda: NOW_MS / 1000,
    )
    await pipeline.process([message("alice", n) for n in range(3)])
    return table, store, kafka


async def test_pseudonymised_outputs_keep_raw_ids_in_the_table() -> None:
    table, store, kafka = await run_pipeline(pseudonymise_key="s3cret")
    expected = Pseudonymiser(b"s3cret").user("alice")
    for scores, alerts in (
        (store.scores, store.alerts),
        (kafka.published_scores, kafka.published_alerts),
    ):
        assert [s.user_id for s in scores] == [expected]
        assert alerts and {a.user_id for a in alerts} == {expected}
        assert "alice" not in repr(scores) + repr(alerts)
    assert list(table.rows) == [b"alice"]  # the state table is keyed by the raw id

    _, raw_store, _ = await run_pipeline()
    assert [s.user_id for s in raw_store.scores] == ["alice"]
    # Alert ids stay deterministic (deduplication works) but differ from the raw ones.
    _, again, _ = await run_pipeline(pseudonymise_key="s3cret")
    assert [a.alert_id for a in again.alerts] == [a.alert_id for a in store.alerts]
    assert {a.alert_id for a in store.alerts}.isdisjoint(a.alert_id for a in raw_store.alerts)
    assert all(len(a.alert_id) == 32 for a in store.alerts)


def test_pseudonyms_depend_on_the_key() -> None:
    a, b = Pseudonymiser(b"k1"), Pseudonymiser(b"k2")
    assert a.user("u") == a.user("u") != b.user("u")
    assert len(a.user("\ud800")) == 64  # lone surrogates do not raise
    with pytest.raises(ValueError):
        Pseudonymiser(b"")


def test_secrets_never_print_but_reach_child_processes() -> None:
    settings = make_settings(
        broker_security_protocol="SASL_PLAINTEXT",
        broker_sasl_username="worker",
        broker_sasl_password="hunter2",
        pseudonymise_key="k",
    )
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
    env = settings.as_environment()
    assert env["CLICKSCORE_BROKER_SASL_PASSWORD"] == "hunter2"
    assert env["CLICKSCORE_PSEUDONYMISE_KEY"] == "k"
    options = aiokafka_options(settings)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "hunter2"
    credentials = faust_credentials(settings)
    assert "hunter2" not in repr(credentials)


def test_sasl_needs_credentials_and_tls_makes_a_verifying_context() -> None:
    with pytest.raises(ValidationError):
        make_settings(broker_security_protocol="SASL_SSL")
    with pytest.raises(ValidationError):
        make_settings(pseudonymise_key="")
    options = aiokafka_options(make_settings(broker_security_protocol="SSL"))
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert aiokafka_options(make_settings()) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(make_settings()) is None


def test_secrets_come_from_files_in_the_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "CLICKSCORE_BROKER_SASL_PASSWORD").write_text("from-a-file\n")
    (tmp_path / "CLICKSCORE_DATABASE_URL").write_text("postgresql+asyncpg://u:p@db:5432/c")
    for name in list(os.environ):
        if name.startswith("CLICKSCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("CLICKSCORE_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("CLICKSCORE_DATABASE_URL", "postgresql+asyncpg://env@db:5432/c")
    settings = Settings.load()
    assert settings.broker_sasl_password is not None
    assert settings.broker_sasl_password.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(settings)
    assert settings.database_url == "postgresql+asyncpg://env@db:5432/c"  # environment wins
    monkeypatch.setenv("CLICKSCORE_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is not a folder"):
        Settings.load()


KAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}


def test_every_kafka_client_takes_the_security_options() -> None:
    """Each aiokafka client the project builds (the local stack's own probe aside) passes
    `**aiokafka_options(settings)`, so SASL/TLS settings reach every connection."""
    clients = 0
    for path in sorted(
        [*(PROJECT_ROOT / "stream").rglob("*.py"), *(PROJECT_ROOT / "trainer").rglob("*.py")]
    ):
        if "stack" in path.relative_to(PROJECT_ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in KAFKA_CLIENTS:
                continue
            clients += 1
            secured = any(
                keyword.arg is None
                and isinstance(keyword.value, ast.Call)
                and getattr(keyword.value.func, "id", None) == "aiokafka_options"
                for keyword in node.keywords
            )
            assert secured, f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {name}"
    assert clients >= 7, clients
