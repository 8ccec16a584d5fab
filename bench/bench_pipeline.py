"""Full-path throughput and latency of one worker, against a raw consumer in the same run.

    python bench/bench_pipeline.py [--events 200000] [--users 20000] [--bootstrap HOST:PORT]

1. Fills a topic with synthetic events (8 partitions), then measures a raw aiokafka
   consumer group reading all of it (the baseline: the most a Python Kafka consumer does).
2. Starts one `interest worker` on the same topic and measures the sustained rate of events
   applied (from the first to the last event applied, read from its /metrics).
3. Once that worker has published its backlog, replays events of other users live at 50%
   of that rate and measures event-to-recommendation latency per message: the
   recommendation record's Kafka timestamp minus its `as_of` (the newest included event,
   whose `ts` is its send time).

Prints ratios and writes bench/results/pipeline.json. Wall-clock figures are only
compared within one run: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream.tools import broker  # noqa: E402
from stream.tools.synthetic import generate  # noqa: E402
from tests.support.harness import Stack, WorkerProc, metric_value, produce, wait_for  # noqa: E402


def records(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


async def raw_consume(bootstrap: str, topic: str, total: int) -> float:
    """Seconds for a fresh aiokafka group consumer to read ``total`` records."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        max_poll_records=1000,
    )
    await consumer.start()
    seen = 0
    start = None
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            n = sum(len(v) for v in batch.values())
            if n and start is None:
                start = time.perf_counter()
            seen += n
    finally:
        await consumer.stop()
    return time.perf_counter() - (start or time.perf_counter())


def worker_rate(
    stack: Stack, tmp: Path, total: int, extra_env: dict[str, str]
) -> tuple[float, WorkerProc]:
    """Events/s one worker applies from a pre-filled topic (first to last event applied)."""
    worker = WorkerProc(stack, tmp / f"w-{uuid.uuid4().hex[:4]}", "bench", **extra_env).start()
    worker.wait_ready(180)
    first: float | None = None
    last_count = 0.0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        text = worker.metrics()
        count = metric_value(text, "interest_events_total") + metric_value(
            text, "interest_events_duplicate_total"
        )
        now = time.perf_counter()
        if count > 0 and first is None:
            first = now
        if count >= total:
            return total / (now - (first or now) + 1e-9), worker
        last_count = count
        time.sleep(0.1)
    raise RuntimeError(f"worker applied only {last_count} of {total}")


def latency(stack: Stack, rate: float, seconds: float, users: int) -> dict[str, float]:
    """Per-message latency (ms) while events arrive live at ``rate``."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"lat-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "latest",
        }
    )
    consumer.subscribe([stack.recommendations])
    wait_for(
        lambda: consumer.poll(0.2) is None and consumer.assignment(),
        30,
        "latency consumer got no partitions",
    )
    n = int(rate * seconds)
    live = generate(users, n, seed=99, start_ms=int(time.time() * 1000))
    for e in live:  # users of their own, so that as_of is the send time of their newest event
        e["user_id"] = "live-" + e["user_id"]

    def send() -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random", "linger.ms": 2}
        )
        start = time.monotonic()
        for i, e in enumerate(live):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            e["ts"] = int(time.time() * 1000)
            producer.produce(stack.events, key=e["user_id"].encode(), value=orjson.dumps(e))
            producer.poll(0)
        producer.flush(30)

    thread = threading.Thread(target=send)
    thread.start()
    lat: list[float] = []
    end = time.monotonic() + seconds + 5
    while time.monotonic() < end:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() or msg.value() is None:
            continue
        body = json.loads(msg.value())
        if not body["user_id"].startswith("live-"):
            continue  # the pre-filled users' backlog, still being published
        _, ts = msg.timestamp()
        lat.append(ts - body["as_of"])
    thread.join()
    consumer.close()
    arr = np.array(lat, dtype=float)
    return {
        "messages": len(lat),
        "p50_ms": float(np.percentile(arr, 50)) if len(arr) else float("nan"),
        "p99_ms": float(np.percentile(arr, 99)) if len(arr) else float("nan"),
        "max_ms": float(arr.max()) if len(arr) else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--bootstrap")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument(
        "--latency-users",
        type=int,
        help="distinct users in the live phase (default: --users); fewer users means more "
        "events per rescoring",
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    info = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        info = broker.start(port=broker.free_port(), data_dir=tmp / "kafka")
        bootstrap = info.bootstrap
    try:
        stack = Stack(bootstrap=bootstrap, suffix=uuid.uuid4().hex[:8], partitions=8)
        from stream.config import load_settings
        from stream.worker.kafka_clients import ensure_topics

        settings = load_settings(
            None,
            {
                "kafka_bootstrap": bootstrap,
                "topic_events": stack.events,
                "topic_dlq": stack.dlq,
                "topic_recommendations": stack.recommendations,
                "app_id": f"app-{stack.suffix}",
                "events_partitions": 8,
            },
        )
        ensure_topics(settings)
        events = generate(
            args.users, args.events, seed=5, start_ms=int(time.time() * 1000) - 3_600_000
        )
        t0 = time.perf_counter()
        produce(bootstrap, stack.events, records(events))
        print(f"produced {len(events)} events in {time.perf_counter() - t0:.1f}s")
        raw_s = asyncio.run(raw_consume(bootstrap, stack.events, len(events)))
        raw_rate = len(events) / raw_s
        print(f"raw aiokafka consumer: {raw_rate:,.0f} events/s")
        env = {"INTEREST_LOG_LEVEL": "WARNING"}
        off_env = {
            **env,
            "INTEREST_TRENDING_ENABLED": "false",
            "INTEREST_APP_ID": f"off-{stack.suffix}",
        }
        rate_off, worker = worker_rate(stack, tmp, len(events), off_env)
        worker.stop()
        print(
            f"one worker, trending off: {rate_off:,.0f} events/s ({rate_off / raw_rate:.2f}x raw)"
        )
        rate, worker = worker_rate(stack, tmp, len(events), env)
        print(f"one worker, full path: {rate:,.0f} events/s ({rate / raw_rate:.2f}x raw)")
        print(f"trending on / off: {rate / rate_off:.2f}")
        # the pre-filled users' rescoring backlog first: live users would queue behind it.
        # Its drain, with no events arriving, is the rescoring capacity (users/s).
        published = "interest_recommendations_published_total"
        drain = {"start": time.perf_counter(), "first": None, "last": None, "count": None}

        def drained() -> bool:
            text = worker.metrics()
            count, now = metric_value(text, published), time.perf_counter()
            if drain["count"] is None or count > drain["count"]:
                drain["first"] = drain["first"] or (now, count)
                drain["last"] = (now, count)
                drain["count"] = count
            return metric_value(text, "interest_dirty_users") == 0

        wait_for(drained, 900, "the worker did not publish its backlog", interval_s=0.2)
        (t0, c0), (t1, c1) = drain["first"], drain["last"]
        rescore_rate = (c1 - c0) / max(t1 - t0, 1e-9)
        print(f"rescoring with no events arriving: {rescore_rate:,.0f} users/s")
        live_users = args.latency_users or args.users
        lat = latency(stack, rate * 0.5, args.latency_seconds, live_users)
        print(
            f"latency at {rate * 0.5:,.0f} events/s: "
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms"
        )
        worker.stop()
        result = {
            "events": len(events),
            "users": args.users,
            "raw_consumer_events_per_s": raw_rate,
            "worker_events_per_s": rate,
            "worker_events_per_s_trending_off": rate_off,
            "ratio_worker_to_raw": rate / raw_rate,
            "ratio_trending_on_to_off": rate / rate_off,
            "latency_rate_events_per_s": rate * 0.5,
            "latency_users": live_users,
            "rescore_users_per_s_idle": rescore_rate,
            "latency": lat,
            "targets": {
                "ratio": 0.3,
                "events_per_s": 20_000,
                "p99_ms": 1000,
                "trending_ratio": 0.7,
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    finally:
        if info is not None:
            broker.down(data_dir=tmp / "kafka")


if __name__ == "__main__":
    main()
