"""Kafka client configuration and topic administration, from one Settings object.

Every client the project makes (confluent-kafka producers, consumers and admin clients,
and Faust's aiokafka clients) gets its security settings from here, so SSL and SASL reach
all of them and secrets are read at the last moment, never logged.

librdkafka's own log lines (a refused connection is logged once per retry, several times a
second) go through Python logging (``interest.kafka``), deduplicated and rate-limited by
:class:`LibrdkafkaLog`; :func:`check_reachable` is the one bounded "does a broker answer"
check every command makes before it starts real work.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from stream.config import SecurityProtocol, Settings, SettingsError
from stream.core.errors import Unreachable

# Java's default partitioner (murmur2) is what aiokafka and Faust use; confluent-kafka's
# default (CRC32) would place a user's events on a different partition than the state
# table's changelog, so every confluent producer of ours uses murmur2.
PARTITIONER = "murmur2_random"
STATE_TABLE, TRENDS_TABLE, DEDUP_TABLE = "users", "trends", "dedup"
TABLES = (STATE_TABLE, TRENDS_TABLE, DEDUP_TABLE)  # tables with their own changelog topic


def confluent_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """librdkafka properties for any confluent-kafka client.

    ``logger`` (served on the client's poll calls) routes librdkafka's log lines through
    :func:`kafka_log` instead of librdkafka's own stderr printer.
    """
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
    conf["logger"] = kafka_log()
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
        # the tables' changelogs, made here so that Faust finds them at its first start
        **{changelog_topic(settings, t): (n, {"cleanup.policy": "compact"}) for t in TABLES},
    }


def changelog_topic(settings: Settings, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


def rekey_topic(settings: Settings) -> str:
    """The repartition topic that carries records whose key is not their user id."""
    return f"{settings.app_id}-{settings.topic_events}-by-user"


def by_category_topic(settings: Settings) -> str:
    """Applied events re-keyed by category, for the trending aggregation."""
    return f"{settings.app_id}-events-by-category"


def trending_topic(settings: Settings) -> str:
    """Compacted snapshots of each category's trending items, followed by every worker."""
    return f"{settings.app_id}-trending"


def snapshot_consumer(settings: Settings, topic: str) -> Any:
    """A consumer of every partition of the snapshots topic, from the beginning, no group."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        confluent_config(
            settings,
            **{
                "group.id": "unused-no-commits",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    return consumer


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics (with their configs); return the names created.

    A topic that exists is left alone even when its partition count differs: changing it
    would move users between partitions, so that is an operator's decision. Raises
    Unreachable (see :func:`check_reachable`) when no broker answers within
    INTEREST_KAFKA_CONNECT_TIMEOUT_S, before anything else.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    check_reachable(settings)

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


# --------------------------------------------------------------------------- librdkafka logs

#: Python logger that receives librdkafka's lines.
KAFKA_LOGGER = "interest.kafka"
#: The same line (numbers such as "after 3ms" aside) is logged at most once per this interval.
LOG_REPEAT_INTERVAL_S = 60.0
#: Distinct lines remembered for the rate limit (the oldest are forgotten first).
LOG_MAX_KEYS = 512

_THREAD_PREFIX = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_VOLATILE = re.compile(r"\(after \d+ms[^)]*\)|\b\d+(?:\.\d+)?\s?(?:ms|s)\b|\d+ identical")


class LibrdkafkaLog:
    """A ``logger`` for confluent-kafka clients: librdkafka's lines into Python logging.

    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client_name, text)`` with a
    Python level. Lines that differ only in durations and counts ("after 0ms in state
    CONNECT") are one line: it is logged the first time, then at most once per
    ``interval_s``, with the number of repeats suppressed meanwhile. librdkafka's errors are
    about connections it retries by itself (a command that cannot go on raises its own
    error), so they are logged as warnings, and its notices and infos at DEBUG: a healthy
    run at INFO prints nothing from librdkafka.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval_s: float = LOG_REPEAT_INTERVAL_S,
        max_keys: int = LOG_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger or logging.getLogger(KAFKA_LOGGER)
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [time last logged, repeats suppressed since]
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()

    @staticmethod
    def level_for(level: int) -> int:
        """librdkafka's level (as Python's) -> the level we log it at."""
        if level >= logging.CRITICAL:
            return logging.CRITICAL
        if level >= logging.WARNING:
            return logging.WARNING
        return logging.DEBUG

    def log(self, level: int, msg: str, *args: Any) -> None:
        """confluent-kafka's entry point (the ``logging.Logger.log`` signature)."""
        facility, text = _split(msg, args)
        level = self.level_for(level)
        if not self.logger.isEnabledFor(level):
            return
        key = (facility, _VOLATILE.sub("#", text))
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.interval_s:
                entry[1] += 1
                return
            suppressed = int(entry[1]) if entry is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        if suppressed:
            text += f" ({suppressed} more like it in the last {self.interval_s:g} s, not shown)"
        self.logger.log(level, "librdkafka %s: %s", facility, text)


def _split(msg: str, args: tuple[Any, ...]) -> tuple[str, str]:
    """(facility, text) of one librdkafka line, the client name and thread prefix dropped."""
    if len(args) == 3:
        facility, _client, text = (str(a) for a in args)
    else:
        facility, text = "LOG", (msg % args if args else msg)
    return facility, _THREAD_PREFIX.sub("", text)


_bridge: LibrdkafkaLog | None = None
_bridge_lock = threading.Lock()


def kafka_log() -> LibrdkafkaLog:
    """The process-wide bridge, shared by every client so a repeated line counts once."""
    global _bridge
    with _bridge_lock:
        if _bridge is None:
            _bridge = LibrdkafkaLog()
        return _bridge


class _LastLine:
    """A probe's logger: keeps librdkafka's last warning or error, logs everything at DEBUG."""

    def __init__(self) -> None:
        self.last: str | None = None

    def log(self, level: int, msg: str, *args: Any) -> None:
        facility, text = _split(msg, args)
        if level >= logging.WARNING:
            self.last = text
        logging.getLogger(KAFKA_LOGGER).debug("librdkafka %s: %s", facility, text)

    def reason(self) -> str | None:
        """The cause in a refused/failed connect line: 'Connection refused', ...; or the line."""
        if self.last is None:
            return None
        text = re.sub(r"\s*\(after \d+ms[^)]*\)\s*$", "", self.last)
        text = re.sub(r"^\S+/(?:bootstrap|\d+): ", "", text)  # "host:port/bootstrap: "
        match = re.search(r"failed: (.+)$", text)
        return (match.group(1) if match else text).strip()


# --------------------------------------------------------------------------- reachability


def unreachable_message(settings: Settings, timeout_s: float, reason: str | None) -> str:
    """One line: which address, for how long, why (when known) and what to check."""
    text = (
        f"no Kafka broker answers at {settings.kafka_bootstrap} within {timeout_s:g} s "
        "(INTEREST_KAFKA_BOOTSTRAP)"
    )
    if reason:
        text += f": {reason}"
    text += "; is it running? `interest kafka status`"
    if settings.kafka_security_protocol is not SecurityProtocol.PLAINTEXT:
        text += (
            f"; check INTEREST_KAFKA_SECURITY_PROTOCOL ({settings.kafka_security_protocol.value})"
            " and its credentials"
        )
    return text + " (wait longer: INTEREST_KAFKA_CONNECT_TIMEOUT_S)"


def check_reachable(settings: Settings, timeout_s: float | None = None) -> int:
    """Raise :class:`Unreachable` unless a broker answers a metadata request in time.

    The wait is ``INTEREST_KAFKA_CONNECT_TIMEOUT_S`` unless ``timeout_s`` is given; librdkafka's
    lines about the failed attempts are kept out of sight (DEBUG), their cause goes into the
    error. Returns the number of brokers in the cluster.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    timeout = settings.kafka_connect_timeout_s if timeout_s is None else timeout_s
    probe = _LastLine()
    admin = AdminClient(confluent_config(settings, logger=probe))
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        admin.poll(0)  # serves the queued log lines to the probe
        reason = probe.reason() or _kafka_reason(exc)
        raise Unreachable(unreachable_message(settings, timeout, reason)) from None
    if not metadata.brokers:
        raise Unreachable(unreachable_message(settings, timeout, "no broker in the metadata"))
    return len(metadata.brokers)


def _kafka_reason(exc: Exception) -> str:
    err = exc.args[0] if exc.args else None
    text = err.str() if hasattr(err, "str") else str(exc)
    return str(text)
