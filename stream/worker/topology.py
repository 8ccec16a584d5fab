"""The Faust application: the topics and tables of one worker (no I/O until it starts)."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from stream.config import Settings
from stream.worker.batch_consumer import BatchApp
from stream.worker.kafka_clients import (
    DEDUP_TABLE,
    STATE_TABLE,
    TRENDS_TABLE,
    by_category_topic,
    faust_broker_url,
    faust_credentials,
    rekey_topic,
)

RECS_TABLE = "recommendations"  # its changelog is the output topic


@dataclass
class StreamApp:
    """The Faust app with the channels and tables the agents use."""

    settings: Settings
    app: BatchApp
    events: faust.TopicT  # events topic and the re-key topic, read by one agent
    rekey: faust.TopicT
    dlq: faust.TopicT
    recommendations: faust.TopicT
    states: faust.Table  # user_id -> encoded UserState (stream.core.codec.encode)
    # user_id -> last recommendation message; its changelog IS the output topic
    published: faust.Table
    by_category: faust.TopicT  # applied events grouped per category, keyed by category
    trends: faust.Table  # category -> encoded CategoryTrend (stream.core.codec.encode_trend)
    dedup: faust.Table  # (user, event id digest) -> when and where applied (stream.core.dedup)


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
    trends = app.Table(
        TRENDS_TABLE, partitions=settings.events_partitions, key_type=bytes, value_type=bytes
    )
    dedup = app.Table(
        DEDUP_TABLE, partitions=settings.events_partitions, key_type=bytes, value_type=bytes
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
        trends,
        dedup,
    )
