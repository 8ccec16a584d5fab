"""The Faust application: topics, tables and the worker entry point (a thin adapter).

Everything that decides anything lives in the functional core (events, interest,
recommend); this module only wires Kafka and RocksDB to it.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

from stream.batch_consumer import BatchApp
from stream.kafka_clients import (
    by_category_topic,
    ensure_topics,
    faust_broker_url,
    faust_credentials,
    rekey_topic,
    trending_topic,
)
from stream.settings import Settings

log = logging.getLogger("interest.app")

STATE_TABLE = "users"
RECS_TABLE = "recommendations"
TRENDS_TABLE = "trends"
RUNNING_MARKER = "worker.running"  # present while a worker uses the data directory


@dataclass
class StreamApp:
    """The Faust app with the channels and tables the agents use."""

    settings: Settings
    app: BatchApp
    events: faust.TopicT  # events topic and the re-key topic, read by one agent
    rekey: faust.TopicT
    dlq: faust.TopicT
    recommendations: faust.TopicT
    states: faust.Table  # user_id -> encoded UserState (stream.interest.encode)
    # user_id -> last recommendation message; its changelog IS the output topic
    published: faust.Table
    by_category: faust.TopicT  # applied events grouped per category, keyed by category
    trending: faust.TopicT  # compacted trending snapshots, followed by every worker
    trends: faust.Table  # category -> encoded CategoryTrend (stream.trending.encode_trend)


def make_app(settings: Settings) -> StreamApp:
    """Build the Faust app for these settings (no I/O until it starts)."""
    app = BatchApp(
        settings.app_id,
        broker=faust_broker_url(settings),
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_partitions=settings.events_partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_session_timeout_ms / 10_000,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        producer_acks=-1,
        stream_wait_empty=False,
        broker_max_poll_records=settings.stream_batch_size,
        stream_recovery_delay=0.1,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        table_cleanup_interval=3600.0,
        worker_redirect_stdouts=False,
    )
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events = app.topic(settings.topic_events, rekey_topic(settings), **raw)
    rekey = app.topic(rekey_topic(settings), partitions=settings.events_partitions, **raw)
    dlq = app.topic(settings.topic_dlq, **raw)
    recommendations = app.topic(
        settings.topic_recommendations,
        partitions=settings.events_partitions,
        compacting=True,
        deleting=False,
        **raw,
    )
    states = app.Table(
        STATE_TABLE,
        partitions=settings.events_partitions,
        key_type=bytes,
        value_type=bytes,
    )
    published = app.Table(
        RECS_TABLE,
        partitions=settings.events_partitions,
        changelog_topic=recommendations,
        key_type=bytes,
        value_type=bytes,
    )
    by_category = app.topic(
        by_category_topic(settings), partitions=settings.events_partitions, **raw
    )
    trending = app.topic(trending_topic(settings), **raw)
    trends = app.Table(
        TRENDS_TABLE, partitions=settings.events_partitions, key_type=bytes, value_type=bytes
    )
    return StreamApp(
        settings,
        app,
        events,
        rekey,
        dlq,
        recommendations,
        states,
        published,
        by_category,
        trending,
        trends,
    )


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kafka", "faust.transport", "mode"):
        logging.getLogger(noisy).setLevel(
            max(logging.WARNING, logging.getLevelName(settings.log_level))
        )


def run_worker(settings: Settings) -> None:
    """Create missing topics, then run the worker until interrupted."""
    from stream.agents import Pipeline
    from stream.web import register_views

    configure_logging(settings)
    os.makedirs(settings.data_dir, exist_ok=True)
    created = ensure_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    stream_app = make_app(settings)
    pipeline = Pipeline(stream_app)
    pipeline.register()
    register_views(stream_app, pipeline)
    log.info("worker settings: %s", _safe(settings))
    marker = settings.data_dir / RUNNING_MARKER
    discard_stores_after_crash(marker, Path(stream_app.app.conf.tabledir))
    marker.write_text(str(os.getpid()))
    worker = faust.Worker(
        stream_app.app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    try:
        worker.execute_from_commandline()
    finally:
        if pipeline.writer.close():
            marker.unlink(missing_ok=True)  # a clean stop: the stores match their changelogs


def discard_stores_after_crash(marker: Path, tabledir: Path) -> None:
    """After a crash, rebuild the local stores from their changelogs.

    A killed worker can leave RocksDB values whose changelog records were never produced
    (Faust writes the store first and flushes the changelog only before a commit). Kept,
    such a value is ahead of Kafka: its events are skipped as duplicates on replay, and the
    next owner of the partition, restoring from the changelog, would lose them. So a data
    directory not released by a clean stop is discarded; its content comes back from Kafka.
    """
    if marker.exists() and tabledir.exists():
        log.warning(
            "the previous worker on %s did not stop cleanly: rebuilding its state stores "
            "from their changelogs",
            marker.parent,
        )
        shutil.rmtree(tabledir)


def _safe(settings: Settings) -> dict[str, Any]:
    """Settings for the log line, secrets masked."""
    return settings.redacted()
