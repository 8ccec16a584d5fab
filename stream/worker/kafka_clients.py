"""Kafka client configuration and topic administration, from one Settings object.

Every client the project makes (confluent-kafka producers, consumers and admin clients,
and Faust's aiokafka clients) gets its security settings from here, so SSL and SASL reach
all of them and secrets are read at the last moment, never logged.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from stream.config import SecurityProtocol, Settings, SettingsError

# Java's default partitioner (murmur2) is what aiokafka and Faust use; confluent-kafka's
# default (CRC32) would place a user's events on a different partition than the state
# table's changelog, so every confluent producer of ours uses murmur2.
PARTITIONER = "murmur2_random"


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka properties for any confluent-kafka client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol.value,
    }
    if settings.kafka_security_protocol in (
        SecurityProtocol.SASL_PLAINTEXT,
        SecurityProtocol.SASL_SSL,
    ):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism.value
        conf["sasl.username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        conf["sasl.password"] = password.get_secret_value() if password else None
    if settings.kafka_security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        if settings.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = str(settings.kafka_ssl_certfile)
        if settings.kafka_ssl_keyfile:
            conf["ssl.key.location"] = str(settings.kafka_ssl_keyfile)
        if settings.kafka_ssl_key_password:
            conf["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    conf.update(extra)
    return conf


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """A durable, ordered, batching producer keyed like the Java client."""
    return confluent_config(
        settings,
        **{
            "partitioner": PARTITIONER,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            **extra,
        },
    )


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The SSL context Faust's clients need, or None for plaintext connections."""
    if settings.kafka_security_protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    if settings.kafka_ssl_certfile:
        password = settings.kafka_ssl_key_password
        ctx.load_cert_chain(
            str(settings.kafka_ssl_certfile),
            str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password.get_secret_value() if password else None,
        )
    return ctx


def faust_credentials(settings: Settings) -> Any:
    """Faust's broker_credentials for the configured security protocol (None: plaintext)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol is SecurityProtocol.PLAINTEXT:
        return None
    if protocol is SecurityProtocol.SSL:
        return faust.SSLCredentials(ssl_context(settings))
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password else None,
        ssl_context=ssl_context(settings),
        mechanism=settings.kafka_sasl_mechanism.value,
    )


def faust_broker_url(settings: Settings) -> str:
    """'h1:9092,h2:9092' -> 'kafka://h1:9092;h2:9092' as Faust spells a broker list."""
    return "kafka://" + ";".join(s.strip() for s in settings.kafka_bootstrap.split(","))


def topic_specs(settings: Settings) -> dict[str, tuple[int, Mapping[str, str]]]:
    """The topics a worker needs: name -> (partitions, config)."""
    n = settings.events_partitions
    return {
        settings.topic_events: (n, {}),
        settings.topic_dlq: (1, {"retention.ms": str(14 * 86_400_000)}),
        settings.topic_recommendations: (n, {"cleanup.policy": "compact"}),
        rekey_topic(settings): (n, {}),
        by_category_topic(settings): (n, {}),
        trending_topic(settings): (n, {"cleanup.policy": "compact"}),
    }


def rekey_topic(settings: Settings) -> str:
    """The repartition topic that carries records whose key is not their user id."""
    return f"{settings.app_id}-{settings.topic_events}-by-user"


def by_category_topic(settings: Settings) -> str:
    """Applied events re-keyed by category, for the trending aggregation."""
    return f"{settings.app_id}-events-by-category"


def trending_topic(settings: Settings) -> str:
    """Compacted snapshots of each category's trending items, followed by every worker."""
    return f"{settings.app_id}-trending"


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics (with their configs); return the names created.

    A topic that exists is left alone even when its partition count differs: changing it
    would move users between partitions, so that is an operator's decision.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(confluent_config(settings))
    metadata = admin.list_topics(timeout=timeout_s).topics
    existing = set(metadata)
    events = metadata.get(settings.topic_events)
    if events is not None and len(events.partitions) != settings.events_partitions:
        raise SettingsError(
            f"INTEREST_EVENTS_PARTITIONS: is {settings.events_partitions} but topic "
            f"{settings.topic_events} has {len(events.partitions)} partitions; set it to "
            f"{len(events.partitions)} (users are placed by partition count)"
        )
    wanted = [
        NewTopic(
            name,
            num_partitions=parts,
            replication_factor=settings.replication_factor,
            config=dict(cfg),
        )
        for name, (parts, cfg) in topic_specs(settings).items()
        if name not in existing
    ]
    if not wanted:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
