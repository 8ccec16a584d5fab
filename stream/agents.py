"""The apply handler and the rescore timer: Faust on the outside, the core on the inside.

Data flows one way: events -> state -> dirty users -> scorer -> recommendations.

States are folded in memory (this worker is the only writer of the partitions it owns) and
written to the table, RocksDB plus changelog, once per user per flush: at every rescore tick
and whenever many records wait. The records whose effects a flush writes are acknowledged
only after it, so Kafka offsets never get ahead of the changelog; a crash in between
replays them, and the core skips what the restored state already holds. Those writes name
the user's (category's) partition (stream.table_writer); Faust's own table reads run inside
a partition context, which tells Faust the partition.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from faust.streams import _current_event  # the context Faust tables take partitions from
from faust.types import TP

from stream import metrics, trending
from stream.app import StreamApp
from stream.candidates import recommend_batch
from stream.events import Event, EventParser, Rejection
from stream.interest import (
    InterestConfig,
    UserState,
    decode,
    encode,
    fold,
    is_expired,
    new_state,
    rebase,
)
from stream.kafka_clients import trending_topic
from stream.recommend import DirtyUsers, build_message, now_ms
from stream.table_writer import TableWriter
from stream.trending import TrendConfig, decode_trend, encode_trend, fold_trend, new_trend
from stream.trending_view import TrendingFollower

log = logging.getLogger("interest.agents")

REKEY_SOURCE_BASE = 1 << 16  # positions from the re-key topic never collide with the events topic's


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    partition: int


@dataclass(frozen=True, slots=True, weakref_slot=True)
class _PartitionEvent:
    """Stands in for the current event so that a table write goes to ``partition``."""

    message: _Message


class UserPartitioner:
    """The partition Kafka's default (murmur2) partitioner gives a user id, memoised."""

    def __init__(self, partitions: int, cache_size: int = 1 << 18) -> None:
        self.partitions = partitions
        self.cache: dict[str, int] = {}
        self.cache_size = cache_size

    def __call__(self, user_id: str) -> int:
        p = self.cache.get(user_id)
        if p is None:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            p = self.cache[user_id] = (murmur2(user_id.encode()) & 0x7FFFFFFF) % self.partitions
        return p


@dataclass(slots=True)
class _Applied:
    events: list[Event]
    positions: list[tuple[int, int]]
    kafka_ts: list[int]
    partition: int


class Pipeline:
    """Runtime state of one worker: parser, scorer, dirty users, partition contexts."""

    def __init__(self, stream_app: StreamApp) -> None:
        from models.scoring import open_scorer

        self.sa = stream_app
        self.settings = stream_app.settings
        self.config = InterestConfig.from_settings(self.settings)
        self.scorer = open_scorer(self.settings)
        self.parser = EventParser.from_settings(self.settings, catalog=self.scorer.catalog)
        self.parser_model_version = self.scorer.model_version
        self.trend_config = TrendConfig.from_settings(self.settings)
        self.trend_changed: dict[str, int] = {}  # category -> its partition, not yet published
        self.follower = TrendingFollower(self.settings, trending_topic(self.settings)).start()
        self.partition_of = UserPartitioner(self.settings.events_partitions)
        self.dirty = DirtyUsers(base_backoff_s=self.settings.rescore_interval_ms / 1000)
        self.contexts: dict[int, _PartitionEvent] = {}
        # Decoded states of owned users: this worker is their only writer while it owns their
        # partition, so the cache is exact; it is dropped on every rebalance.
        self.cache: dict[str, UserState] = {}
        self.cache_size = 200_000
        self.unsaved: dict[str, int] = {}  # user_id -> partition: folded, not yet written
        self.unacked: list[Any] = []  # records whose effects the next flush writes
        self.writer = TableWriter(self.settings, ack=self.ack_record)
        self.states_changelog = self.sa.states.changelog_topic.get_topic_name()
        self.trends_changelog = self.sa.trends.changelog_topic.get_topic_name()
        self.flush_after = 20 * self.settings.stream_batch_size  # records waiting, at most
        # (version, events_applied) of each owned user's last message, read once
        self.published_meta: dict[str, tuple[int, int]] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.scoring: asyncio.Future[Any] | None = None
        self.scan_pending = False  # set once the state table has recovered
        self.last_applied = 0.0  # monotonic time of the last event batch
        self.turn = 0
        self.started = time.time()

    # ------------------------------------------------------------------ registration
    def register(self) -> None:
        app = self.sa.app
        app.batch_route(self.sa.events, self.apply_batch, acks=False)
        app.timer(self.settings.rescore_interval_ms / 1000, name="rescore")(self.rescore_timer)
        app.timer(5.0, name="gauges")(self.gauges_timer)
        app.batch_route(self.sa.by_category, self.fold_trends, acks=False)
        app.timer(self.settings.trending_publish_interval_ms / 1000, name="trending-publish")(
            self.publish_trends
        )
        app.on_partitions_revoked.connect(self.on_revoked)
        app.on_partitions_assigned.connect(self.on_assigned)
        self.sa.states.on_recover(self.on_states_recovered)
        if self.settings.expire_threshold > 0:
            app.timer(60.0, name="expire")(self.expire_timer)

    async def on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        """Forget what is folded and not written: Faust's recovery seeks every partition back
        to its committed offset, so those records are read again by whoever owns them next."""
        self.forget_unsaved()
        gone = {tp.partition for tp in revoked}
        self.trend_changed = {c: p for c, p in self.trend_changed.items() if p not in gone}
        self.dirty.drop_partitions(
            {tp.partition for tp in revoked if tp.topic == self.settings.topic_events}
        )

    async def on_assigned(self, app: Any, assigned: set[TP], **_: Any) -> None:
        self.forget_unsaved()

    async def on_states_recovered(self) -> None:
        """The state stores are complete only now: look for users applied, never published.

        (Scanning at assignment time would read stores still being opened or restored.)"""
        self.scan_pending = True

    # ------------------------------------------------------------------ partition context
    @contextlib.contextmanager
    def partition_context(self, partition: int) -> Iterator[None]:
        """Make Faust's tables write to (and read from) ``partition``."""
        ctx = self.contexts.get(partition)
        if ctx is None:
            ctx = self.contexts[partition] = _PartitionEvent(
                _Message(self.settings.topic_events, partition)
            )
        token = _current_event.set(weakref.ref(ctx))
        try:
            yield
        finally:
            _current_event.reset(token)

    def read_state(self, user_id: str) -> UserState | None:
        """The cached state, else the table's (read from the user's own partition)."""
        state = self.cache.get(user_id)
        if state is None:
            with self.partition_context(self.partition_of(user_id)):
                raw = self.sa.states.get(user_id.encode())
            if raw is None:
                return None
            state = self.remember(decode(raw))
        return state

    def remember(self, state: UserState) -> UserState:
        if len(self.cache) >= self.cache_size:
            oldest = next(iter(self.cache))
            if oldest in self.unsaved:
                self.flush_states()
            del self.cache[oldest]
        self.cache[state.user_id] = state
        return state

    def flush_states(self) -> None:
        """Write every state folded since the last flush, once; its records are acknowledged
        when the changelog records are delivered (stream.table_writer)."""
        store = self.sa.states.data
        for user_id, partition in self.unsaved.items():
            state = self.cache.get(user_id)
            if state is None:  # cannot happen: unsaved states are never evicted
                raise RuntimeError(f"state of {user_id!r} left the cache before its write")
            value = encode(state)
            metrics.STATE_BYTES.observe(len(value))
            self.writer.put(store, self.states_changelog, partition, user_id.encode(), value)
        self.unsaved.clear()
        self.writer.seal(self.unacked)
        self.unacked = []
        self.writer.poll()

    def ack_record(self, record: Any) -> None:
        self.sa.app.consumer.ack(record)

    def forget_unsaved(self) -> None:
        """Drop every cached state with what was folded into it and not yet written."""
        self.writer.forget()
        self.unsaved.clear()
        self.unacked.clear()
        self.cache.clear()
        self.published_meta.clear()

    # ------------------------------------------------------------------ apply
    async def apply_batch(self, batch: Sequence[Any]) -> None:
        """Fold one fetch of event records (stream.batch_consumer delivers them).

        Nothing in here awaits, so no rebalance can fall between reading a state and
        folding into it; what it produces goes through the table writer."""
        self.last_applied = time.monotonic()
        now = now_ms()
        groups: dict[str, _Applied] = {}
        forwards: list[tuple[bytes, bytes]] = []
        rekey_name = self.sa.rekey.get_topic_name()
        for msg in batch:
            ts_ms = int(msg.timestamp * 1000) if msg.timestamp else now
            result = self.parser.parse(msg.value, key=msg.key, timestamp_ms=ts_ms, now_ms=now)
            if isinstance(result, Rejection):
                self.reject(result, msg)
                continue
            partition = self.partition_of(result.user_id)
            from_rekey = msg.topic == rekey_name
            if not from_rekey and (
                msg.partition != partition or msg.key != result.user_id.encode()
            ):
                forwards.append((result.user_id.encode(), msg.value))
                continue
            group = groups.get(result.user_id)
            if group is None:
                group = groups[result.user_id] = _Applied([], [], [], partition)
            group.events.append(result)
            source = msg.partition + (REKEY_SOURCE_BASE if from_rekey else 0)
            group.positions.append((source, msg.offset))
            group.kafka_ts.append(ts_ms)
        self.refresh_model()
        by_category: dict[str, list[list[Any]]] = defaultdict(list)
        applied: dict[str, int] = defaultdict(int)
        duplicates = 0
        trending_enabled = self.settings.trending_enabled
        for user_id, group in groups.items():
            duplicates += self.apply_user(user_id, group, applied)
            if not trending_enabled:
                continue
            for event, (source, offset) in zip(group.events, group.positions, strict=True):
                if event.category is not None:
                    entry = [event.user_id, event.item_id, event.type, event.ts, event.weight]
                    by_category[event.category].append([*entry, source, offset])
        for key, value in forwards:
            self.writer.produce(rekey_name, key, value)
        by_category_name = self.sa.by_category.get_topic_name()
        for category, entries in by_category.items():
            self.writer.produce(by_category_name, category.encode(), orjson.dumps(entries))
        for type_, n in applied.items():
            metrics.EVENTS.labels(type=type_).inc(n)
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        self.unacked.extend(batch)
        if len(self.unacked) >= self.flush_after:
            self.flush_states()
        else:
            self.writer.poll()

    def apply_user(self, user_id: str, group: _Applied, applied: dict[str, int]) -> int:
        """One read-modify-write of the user's state for all its events in the batch.

        Adds the applied events per type to ``applied``; returns the duplicates skipped.
        """
        state = self.read_state(user_id) or self.remember(new_state(user_id))
        result = fold(  # re-bases the vectors itself when the model changed
            state,
            group.events,
            self.config,
            vectors=self.scorer.item_vectors,
            positions=group.positions,
            kafka_ts=group.kafka_ts,
        )
        for type_, n in result.applied_by_type.items():
            applied[type_] += n
        if result.applied:
            self.unsaved[user_id] = group.partition
        if result.applied or state.events_applied > self.last_published(user_id)[1]:
            self.dirty.mark(group.partition, user_id, state.last_event_kafka_ts or 0)
        return result.duplicates

    def reject(self, rejection: Rejection, msg: Any) -> None:
        """Dead-letter a bad record with the reason, and count it (CONTRACT section 1)."""
        value: bytes = msg.value or b""
        try:
            original = value.decode("utf-8")
        except UnicodeDecodeError:
            original = base64.b64encode(value).decode("ascii")
        record = {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "original": original,
        }
        metrics.REJECTED.labels(reason=rejection.reason).inc()
        self.writer.produce(self.settings.topic_dlq, msg.key, orjson.dumps(record))

    def refresh_model(self) -> None:
        """A new model version brings a new catalog for category fallbacks."""
        version = self.scorer.model_version
        if version != self.parser_model_version:
            self.parser = EventParser.from_settings(self.settings, catalog=self.scorer.catalog)
            self.parser_model_version = version
            metrics.MODEL_INFO.clear()
            if version is not None:
                metrics.MODEL_INFO.labels(version=version).set(1)

    # ------------------------------------------------------------------ rescore
    async def rescore_timer(self) -> None:
        try:
            self.flush_states()
            if self.scan_pending:
                self.scan_for_pending()
            await self.rescore_dirty()
        except Exception:
            log.exception("rescoring failed; users stay dirty")

    def active_partitions(self) -> set[int]:
        actives = self.sa.app.assignor.assigned_actives()
        return {tp.partition for tp in actives if tp.topic == self.settings.topic_events}

    def scan_for_pending(self) -> None:
        """After a (re)assignment, find users applied but never published (a crash between)."""
        app = self.sa.app
        if app.in_recovery or not self.active_partitions():
            return
        actives = self.active_partitions()
        found = 0
        for key, raw in self.sa.states.items():
            user_id = key.decode() if isinstance(key, bytes) else str(key)
            partition = self.partition_of(user_id)
            if partition not in actives:
                continue
            state = decode(raw)
            if state.events_applied > self.last_published(user_id)[1]:
                self.dirty.mark(partition, user_id, state.last_event_kafka_ts or 0)
                found += 1
        self.scan_pending = False
        if found:
            log.info("found %d users applied but not yet published", found)

    async def rescore_dirty(self) -> None:
        now = time.monotonic()
        if not self.dirty.ready(now):
            return
        if self.scoring is not None and not self.scoring.done():
            return  # a hung scorer call still holds the thread: wait, never pile up
        actives = self.active_partitions()
        gone = {
            p for p in self.dirty.by_partition if p not in actives and self.dirty.by_partition[p]
        }
        if gone:
            log.info("dropping dirty users of partitions no longer owned: %s", sorted(gone))
            self.dirty.drop_partitions(gone)
        # Under load, rescoring takes at most half of each interval: the rest goes to applying
        # events, and users that stay dirty meanwhile coalesce more events per publication.
        # While no event batch arrives, it goes on (a backlog drains at full speed).
        started = time.monotonic()
        deadline = started + self.settings.rescore_interval_ms / 2000
        while self.dirty.count() and (time.monotonic() < deadline or self.last_applied < started):
            order = sorted(actives)
            self.turn = (self.turn + 1) % max(1, len(order))  # no partition waits behind another
            taken = self.dirty.take(
                order[self.turn :] + order[: self.turn], self.settings.rescore_batch_size
            )
            if not taken:
                break
            if not await self.rescore_batch(taken):
                self.dirty.give_back(taken)
                delay = self.dirty.failed(time.monotonic())
                log.warning("scorer failed; %d users stay dirty, retry in %.1fs", len(taken), delay)
                return
            self.dirty.succeeded()

    async def rescore_batch(self, taken: list[tuple[int, str, int]]) -> bool:
        states: list[UserState] = []
        kept: list[tuple[int, str, int]] = []
        vectors = self.scorer.item_vectors
        for partition, user_id, ts in taken:
            state = self.read_state(user_id)
            if state is None:
                log.warning(
                    "dirty user %r has no state on partition %d; skipped", user_id, partition
                )
                continue
            if vectors is not None and state.model_version != vectors.version:
                rebase(state, vectors)
            states.append(state)
            kept.append((partition, user_id, ts))
        if not states:
            return True
        model_version = self.scorer.model_version
        generation = self.sa.app.consumer_generation_id
        metrics.RESCORE_BATCH_SIZE.observe(len(states))
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.scoring = loop.run_in_executor(self.executor, self.rank, states)
        try:
            recs = await asyncio.wait_for(
                asyncio.shield(self.scoring), self.settings.scorer_timeout_ms / 1000
            )
        except Exception as exc:
            metrics.SCORER_ERRORS.inc()
            log.warning("scorer call failed: %s", exc if str(exc) else type(exc).__name__)
            return False
        metrics.RESCORE_SECONDS.observe(time.perf_counter() - started)
        if self.sa.app.consumer_generation_id != generation:
            return True  # a rebalance came in between: the replay after it marks them again
        self.publish(states, kept, recs, model_version)
        return True

    def last_published(self, user_id: str) -> tuple[int, int]:
        """(version, events_applied) of the user's last message in the output topic.

        The recommendations table is restored from the output topic itself, so this is what
        subscribers saw, even when a crash lost a write in between: the next version is
        above it, and a state with more events than it is still to be published.
        """
        meta = self.published_meta.get(user_id)
        if meta is None:
            raw = self.sa.published.get(user_id.encode())
            if raw is None:
                return 0, 0
            message = orjson.loads(raw)
            meta = int(message["version"]), int(message["events_applied"])
            if len(self.published_meta) >= self.cache_size:
                del self.published_meta[next(iter(self.published_meta))]
            self.published_meta[user_id] = meta
        return meta

    def rank(self, states: list[UserState]) -> list[Any]:
        """The blended ranking of stream.candidates, run in the scorer thread."""
        self.scorer.refresh()
        return recommend_batch(
            states,
            trending=self.follower.view,
            global_top=self.follower.top,
            scorer=self.scorer,
            k=self.settings.top_k,
            policy=self.settings.purchased_policy.value,
            limit=self.settings.candidate_limit,
        )

    def publish(
        self,
        states: list[UserState],
        kept: list[tuple[int, str, int]],
        recs: list[Any],
        model_version: str | None,
    ) -> None:
        """One write per user: the message goes to the recommendations table, whose changelog
        is the output topic; its version is one above the last one published."""
        published_at = time.time()
        for state, (partition, user_id, newest_ts), items in zip(states, kept, recs, strict=True):
            version = self.last_published(user_id)[0] + 1
            message = build_message(state, items, version=version, model_version=model_version)
            self.writer.put(
                self.sa.published.data,
                self.settings.topic_recommendations,
                partition,
                user_id.encode(),
                orjson.dumps(message),
            )
            self.published_meta[user_id] = version, state.events_applied
            metrics.PUBLISHED.inc()
            if newest_ts:
                metrics.EVENT_TO_RECOMMENDATION.observe(max(0.0, published_at - newest_ts / 1000))

    # ------------------------------------------------------------------ trending
    async def fold_trends(self, batch: Sequence[Any]) -> None:
        """One read-modify-write per category per batch, deduplicated by source position."""
        groups: dict[str, tuple[int, list[Event], list[tuple[int, int]]]] = {}
        for msg in batch:
            category = msg.key.decode()
            group = groups.setdefault(category, (msg.partition, [], []))
            for user, item, type_, ts, weight, source, offset in orjson.loads(msg.value):
                group[1].append(Event(user, item, type_, ts, "", category, weight))
                group[2].append((source, offset))
        for category, (partition, events, positions) in groups.items():
            key = category.encode()
            with self.partition_context(partition):
                raw = self.sa.trends.get(key)
            trend = decode_trend(raw) if raw else new_trend(category, self.trend_config)
            if fold_trend(trend, events, self.trend_config, positions):
                self.writer.put(
                    self.sa.trends.data, self.trends_changelog, partition, key, encode_trend(trend)
                )
                self.trend_changed[category] = partition
        self.writer.seal(batch)  # acknowledged once the changelog records are delivered
        self.writer.poll()

    async def publish_trends(self) -> None:
        """Publish the snapshots of categories that changed since the last round."""
        changed, self.trend_changed = self.trend_changed, {}
        published_at = now_ms()
        for category in changed:
            raw = self.sa.trends.get(category.encode())
            if raw is None:
                continue
            snap = trending.snapshot(decode_trend(raw), self.settings.trending_items)
            snap["published_at"] = published_at
            await self.sa.trending.send(key=category.encode(), value=orjson.dumps(snap))

    # ------------------------------------------------------------------ housekeeping
    async def gauges_timer(self) -> None:
        try:
            metrics.DIRTY_USERS.set(self.dirty.count())
            metrics.TRENDING_CATEGORIES.set(len(self.follower.view))
            metrics.USERS.set(self.count_users())
            await self.update_lag()
            self.refresh_model()
        except Exception:
            log.debug("gauge update failed", exc_info=True)

    def count_users(self) -> int:
        """Estimated keys in the RocksDB stores of the active partitions."""
        store = self.sa.states.data
        actives = self.active_partitions()
        total = 0
        for partition, db in getattr(store, "_dbs", {}).items():
            if partition in actives:
                with contextlib.suppress(Exception):
                    total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        return total

    async def update_lag(self) -> None:
        consumer = self.sa.app.consumer
        for tp in self.sa.app.assignor.assigned_actives():
            if tp.topic != self.settings.topic_events:
                continue
            position = await consumer.position(tp)
            highwater = consumer.highwater(tp)
            if position is not None and highwater is not None:
                metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(0, highwater - position)
                )

    async def expire_timer(self) -> None:
        """Delete users whose long-horizon interests all decayed below the threshold."""
        self.flush_states()
        now = now_ms()
        expired: dict[int, list[bytes]] = defaultdict(list)
        actives = self.active_partitions()
        for key, raw in self.sa.states.items():
            user_id = key.decode() if isinstance(key, bytes) else str(key)
            partition = self.partition_of(user_id)
            if partition in actives and is_expired(
                decode(raw), now, self.settings.expire_threshold
            ):
                expired[partition].append(user_id.encode())
        store = self.sa.states.data
        for partition, keys in expired.items():
            for key in keys:
                self.writer.put(store, self.states_changelog, partition, key, None)
                self.cache.pop(key.decode(), None)
        if expired:
            log.info("expired %d quiet users", sum(len(k) for k in expired.values()))
