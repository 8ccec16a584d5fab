"""The one place that wires a worker together: settings in, a running Faust worker out.

Everything here is construction and lifecycle: the parts (stream.worker.apply, .rescore,
.trends, .housekeeping, .state_store, .web) receive what they use and decide nothing about
where it comes from. Shutdown closes everything this module opened. A fatal error
(:class:`stream.core.errors.FatalError`, e.g. a changelog record that could not be
delivered) stops the worker with one log line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Producer

from models.serving import open_scorer
from stream.config import (
    Settings,
    dedup_config,
    event_parser,
    interest_config,
    trend_config,
)
from stream.core.errors import FatalError
from stream.core.scheduling import DirtyUsers
from stream.core.types import Scorer
from stream.worker.apply import ApplyHandler, Topics
from stream.worker.dedup import DedupStore
from stream.worker.housekeeping import Expiry, Gauges, ModelTracker, PendingScan
from stream.worker.kafka_clients import (
    by_category_topic,
    ensure_topics,
    producer_config,
    snapshot_consumer,
    trending_topic,
)
from stream.worker.ranking import ChildSpec, ProcessRanking, Ranking, RankOptions, ThreadRanking
from stream.worker.rescore import PublishedLog, Publisher, Rescorer
from stream.worker.state_store import StateStore, UserPartitioner
from stream.worker.table_writer import PRODUCER_OPTIONS, TableWriter
from stream.worker.topology import StreamApp, make_app
from stream.worker.trends import TrendAggregator, TrendingFollower, follow_snapshots
from stream.worker.web import register_views

log = logging.getLogger("interest.worker")

RUNNING_MARKER = "worker.running"  # present while a worker uses the data directory
FLUSH_AFTER_BATCHES = 20  # a flush at the latest when this many batches' records wait
GAUGES_INTERVAL_S = 5.0
EXPIRY_INTERVAL_S = 60.0
STOP_DRAIN_S = 20.0  # how long a clean stop waits for the last writes to be delivered
GC_YOUNG_THRESHOLD = 50_000  # allocations between young collections (Python's default: 700)


@dataclass
class Worker:
    """The parts of one running worker, and what must be closed when it stops."""

    settings: Settings
    sa: StreamApp
    scorer: Scorer
    writer: TableWriter
    follower: TrendingFollower
    executor: ThreadPoolExecutor
    states: StateStore
    dedup: DedupStore
    published: PublishedLog
    dirty: DirtyUsers
    model: ModelTracker
    apply: ApplyHandler
    rescorer: Rescorer
    trends: TrendAggregator
    scan: PendingScan
    gauges: Gauges
    expiry: Expiry
    started: float = field(default_factory=time.time)
    fatal: FatalError | None = None

    def active_partitions(self) -> set[int]:
        return active_events_partitions(self.sa)

    def health(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "in_recovery": bool(self.sa.app.in_recovery),
            "active_partitions": sorted(self.active_partitions()),
            "dirty_users": self.dirty.count(),
            "model_version": self.scorer.model_version,
        }

    def close(self) -> bool:
        """Close everything opened; True when every table record was delivered."""
        delivered = self.writer.close()
        self.follower.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.rescorer.rank.close()
        self.scorer.close()
        return delivered and self.fatal is None


def active_events_partitions(sa: StreamApp) -> set[int]:
    actives = sa.app.assignor.assigned_actives()
    return {tp.partition for tp in actives if tp.topic == sa.settings.topic_events}


def build(settings: Settings) -> Worker:
    """Construct every part of a worker for these settings (nothing runs yet)."""
    sa = make_app(settings)
    app = sa.app
    scorer_args = {
        "kind": settings.scorer.value,
        "model_dir": settings.model_dir,
        "poll_interval_s": settings.model_poll_interval_s,
        "tfserving_url": settings.tfserving_url,
        "tfserving_model_name": settings.tfserving_model_name,
        "timeout_s": settings.scorer_timeout_ms / 1000,
    }
    scorer = open_scorer(**scorer_args)
    writer = TableWriter(
        Producer(producer_config(settings, **PRODUCER_OPTIONS)),
        ack=lambda marks: app.consumer.acknowledge(marks),
    )
    topic = trending_topic(settings)
    follower = TrendingFollower(lambda: snapshot_consumer(settings, topic)).start()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
    partition_of = UserPartitioner(settings.events_partitions)
    dedup = DedupStore(
        sa.dedup, sa.dedup.changelog_topic.get_topic_name(), writer, dedup_config(settings)
    )
    states = StateStore(
        sa.states,
        sa.states.changelog_topic.get_topic_name(),
        writer,
        partition_of,
        companions=[dedup],
    )
    options = RankOptions(settings.top_k, settings.purchased_policy.value, settings.candidate_limit)
    ranking: Ranking
    if settings.ranking.value == "process":
        follow = (settings, topic)
        spec = ChildSpec(
            options, open_scorer, scorer_args, follow_snapshots, follow, settings.log_level
        )
        ranking = ProcessRanking(
            spec, encode_state=states.encoded_of, processes=settings.ranking_processes
        ).start()
    else:
        ranking = ThreadRanking(scorer, follower.current, options)
    published = PublishedLog(sa.published, partition_of)
    dirty = DirtyUsers(base_backoff_s=settings.rescore_interval_ms / 1000)
    model = ModelTracker(scorer, lambda catalog: event_parser(settings, catalog))

    def vectors() -> Any:
        return scorer.item_vectors

    apply = ApplyHandler(
        model.parser,
        states,
        dedup,
        published,
        dirty,
        writer,
        Topics(
            rekey=sa.rekey.get_topic_name(),
            by_category=by_category_topic(settings),
            dlq=settings.topic_dlq,
        ),
        interest_config(settings),
        vectors=vectors,
        partition_of=partition_of,
        trending=settings.trending_enabled,
        flush_after=FLUSH_AFTER_BATCHES * settings.stream_batch_size,
        max_original=settings.dlq_max_original_bytes,
    )
    rescorer = Rescorer(
        states,
        dirty,
        ranking,
        Publisher(sa.published, settings.topic_recommendations, writer, published),
        executor,
        vectors=vectors,
        active_partitions=lambda: active_events_partitions(sa),
        generation=lambda: app.consumer_generation_id,
        last_applied=lambda: apply.last_applied,
        interval_s=settings.rescore_interval_ms / 1000,
        batch_size=settings.rescore_batch_size,
        timeout_s=settings.scorer_timeout_ms / 1000,
    )
    trends = TrendAggregator(
        sa.trends,
        sa.trends.changelog_topic.get_topic_name(),
        writer,
        topic,
        trend_config(settings),
        reject=apply.reject,
    )
    scan = PendingScan(
        states,
        published,
        dirty,
        lambda: active_events_partitions(sa),
        lambda: bool(app.in_recovery),
    )
    gauges = Gauges(
        states,
        dirty,
        lambda: len(follower.view),
        lambda: app.consumer,
        lambda: app.assignor.assigned_actives(),
        settings.topic_events,
    )
    expiry = Expiry(states, lambda: active_events_partitions(sa), settings.expire_threshold)
    return Worker(
        settings,
        sa,
        scorer,
        writer,
        follower,
        executor,
        states,
        dedup,
        published,
        dirty,
        model,
        apply,
        rescorer,
        trends,
        scan,
        gauges,
        expiry,
    )


def register(worker: Worker) -> None:
    """Routes, timers, rebalance hooks and HTTP views of a built worker."""
    settings, sa = worker.settings, worker.sa
    app = sa.app
    guard = _Guard(worker)
    app.batch_route(sa.events, guard.handler(worker.apply), acks=False)
    app.batch_route(sa.by_category, guard.handler(worker.trends.fold), acks=False)

    async def rescore_round() -> None:
        worker.states.flush()
        worker.scan.run()
        await worker.rescorer.rescore_dirty()

    rescore_round_guarded = guard.timer(rescore_round, "rescoring failed; users stay dirty")

    async def rescore_loop() -> None:
        """A round every interval (a task, not a timer: a round that drains a backlog may
        last longer than the interval without a timer piling up behind it)."""
        interval = settings.rescore_interval_ms / 1000
        while True:
            started = time.monotonic()
            await rescore_round_guarded()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def gauges() -> None:
        await worker.gauges.update()
        worker.model.refresh()

    async def expire() -> None:
        worker.expiry.run()

    async def forget_old_ids() -> None:
        worker.dedup.expire(worker.active_partitions())

    app.task(rescore_loop)
    app.timer(GAUGES_INTERVAL_S, name="gauges")(guard.timer(gauges, "gauge update failed"))
    app.timer(settings.trending_publish_interval_ms / 1000, name="trending-publish")(
        guard.timer(worker.trends.publish, "trending publication failed")
    )
    app.timer(EXPIRY_INTERVAL_S, name="dedup-expire")(
        guard.timer(forget_old_ids, "forgetting old event ids failed")
    )
    if settings.expire_threshold > 0:
        app.timer(EXPIRY_INTERVAL_S, name="expire")(guard.timer(expire, "expiry failed"))

    async def on_revoked(_app: Any, revoked: set[Any], **_: Any) -> None:
        """Forget what is folded and not written: Faust's recovery seeks every partition
        back to its committed offset, so those records are read again by their next owner."""
        forget(worker)
        worker.dirty.drop_partitions(
            {tp.partition for tp in revoked if tp.topic == settings.topic_events}
        )

    async def on_assigned(_app: Any, assigned: set[Any], **_: Any) -> None:
        forget(worker)

    def write_before_stop() -> None:
        """A clean stop: write what was folded and wait for it, so Faust's last commit
        covers those records (a restart then reads nothing again)."""
        worker.states.flush()
        worker.writer.drain(STOP_DRAIN_S)

    app.before_final_commit = write_before_stop
    app.on_partitions_revoked.connect(on_revoked)
    app.on_partitions_assigned.connect(on_assigned)
    sa.states.on_recover(worker.scan.on_recovered)
    register_views(
        app,
        sa.states,
        sa.published,
        health=worker.health,
        read_state=worker.states.read,
        trending=lambda: worker.follower.view,
    )


def forget(worker: Worker) -> None:
    """Drop everything folded and not written, and the cached publication log."""
    worker.states.forget()
    worker.published.forget()
    worker.trends.forget()


class _Guard:
    """Keeps one failing call from stopping the worker, and a fatal one from being ignored."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def stop(self, exc: FatalError) -> None:
        """One line, then a clean stop (SIGTERM's path); run_worker exits non-zero."""
        if self.worker.fatal is None:
            self.worker.fatal = exc
            log.critical("stopping the worker: %s", exc)
            os.kill(os.getpid(), signal.SIGTERM)

    def handler(self, fn: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def run(batch: Any) -> None:
            try:
                await fn(batch)
            except FatalError as exc:  # the records stay unacknowledged: read again later
                self.stop(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the handlers isolate records: this is not about one
                log.debug("batch handler failed", exc_info=True)
                self.stop(FatalError(f"a batch handler failed: {type(exc).__name__}: {exc}"))

        return run

    def timer(self, fn: Callable[[], Awaitable[None]], what: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await fn()
            except FatalError as exc:
                self.stop(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(what)

        return run


def configure_logging(settings: Settings) -> None:
    """INFO by default; aiokafka's chatter from WARNING up. librdkafka's lines come through
    stream.worker.kafka_clients.LibrdkafkaLog (logger ``interest.kafka``): its connection
    errors as rate-limited warnings, the rest at DEBUG."""
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kafka", "faust.transport", "mode"):
        logging.getLogger(noisy).setLevel(
            max(logging.WARNING, logging.getLevelName(settings.log_level))
        )


def run_worker(settings: Settings) -> int:
    """Create missing topics, then run the worker until stopped; returns the exit code.

    No broker answering within INTEREST_KAFKA_CONNECT_TIMEOUT_S: ensure_topics raises
    Unreachable first (one line, exit 1 from the CLI)."""
    configure_logging(settings)
    os.makedirs(settings.data_dir, exist_ok=True)
    created = ensure_topics(settings)
    if created:
        log.info("created topics: %s", ", ".join(created))
    worker = build(settings)
    register(worker)
    log.info("worker settings: %s", settings.redacted())
    marker = settings.data_dir / RUNNING_MARKER
    discard_stores_after_crash(marker, Path(worker.sa.app.conf.tabledir))
    marker.write_text(str(os.getpid()))
    settle_garbage_collector()
    runner = faust.Worker(
        worker.sa.app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    code = 0
    try:
        runner.execute_from_commandline()
    except SystemExit as exc:  # mode's worker always leaves through sys.exit
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if worker.close():
            marker.unlink(missing_ok=True)  # a clean stop: the stores match their changelogs
    return 1 if worker.fatal is not None else code


def settle_garbage_collector() -> None:
    """Freeze what exists after start (modules, Faust's and the model's objects: hundreds of
    thousands) so collections never walk it again, and collect the young generation less
    often: a fetch allocates thousands of short-lived objects, none of them in cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 50)


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
