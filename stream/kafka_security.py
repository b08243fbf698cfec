"""Kafka authentication and TLS from KafkaSettings, for Faust (the worker) and plain aiokafka
clients (every other connection the project opens). Secrets leave their SecretStr only here."""

from __future__ import annotations

import ssl
from typing import Any

from stream.settings import KafkaSettings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying TLS context for SSL and SASL_SSL; None for plaintext protocols."""
    if not settings.broker_security_protocol.endswith("SSL"):
        return None
    cafile = str(settings.broker_ssl_cafile) if settings.broker_ssl_cafile else None
    context = ssl.create_default_context(cafile=cafile)
    if settings.broker_ssl_certfile is not None:
        keyfile = str(settings.broker_ssl_keyfile) if settings.broker_ssl_keyfile else None
        context.load_cert_chain(str(settings.broker_ssl_certfile), keyfile)
    return context


def aiokafka_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer/Producer/AdminClient."""
    options: dict[str, Any] = {"security_protocol": settings.broker_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.broker_security_protocol.startswith("SASL"):
        assert settings.broker_sasl_password is not None  # KafkaSettings validates this
        options |= {
            "sasl_mechanism": settings.broker_sasl_mechanism,
            "sasl_plain_username": settings.broker_sasl_username,
            "sasl_plain_password": settings.broker_sasl_password.get_secret_value(),
        }
    return options


def faust_credentials(settings: KafkaSettings) -> Any:
    """Faust's `broker_credentials`: None, SSLCredentials or SASLCredentials."""
    import faust

    protocol = settings.broker_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    assert settings.broker_sasl_password is not None  # KafkaSettings validates this
    return faust.SASLCredentials(
        username=settings.broker_sasl_username,
        password=settings.broker_sasl_password.get_secret_value(),
        mechanism=settings.broker_sasl_mechanism,
        ssl_context=context,  # SASL_SSL with a context, SASL_PLAINTEXT without
    )
