"""`interest produce`: replay an event file into the events topic, keyed by user id.

Records are sent as they are in the file (after format conversion), so invalid rows reach
the worker and its dead-letter topic exactly as a live producer's would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models.data import iter_raw
from stream.config import Settings
from stream.core.errors import DataFormatError, ProduceError
from stream.worker.kafka_clients import check_reachable, producer_config


@dataclass
class ProduceReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rate = self.delivered / self.seconds if self.seconds > 0 else 0.0
        text = f"delivered {self.delivered} of {self.sent} events in {self.seconds:.1f}s"
        text += f" ({rate:,.0f}/s)"
        if self.failed:
            text += f"; {self.failed} failed: " + "; ".join(self.errors[:3])
        return text


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


class Pacer:
    """Sleeps so that records go out at a fixed rate and/or at a sped-up event time."""

    def __init__(self, rate: float | None, speedup: float | None) -> None:
        self.rate = rate
        self.speedup = speedup
        self.start = time.monotonic()
        self.first_ts: int | None = None
        self.n = 0

    def wait(self, ts: Any) -> None:
        due = self.start
        if self.rate:
            due = max(due, self.start + self.n / self.rate)
        if self.speedup and isinstance(ts, int):
            if self.first_ts is None:
                self.first_ts = ts
            due = max(due, self.start + (ts - self.first_ts) / 1000 / self.speedup)
        self.n += 1
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def shifted(records: Iterable[dict[str, Any]], offset_ms: int) -> Iterator[dict[str, Any]]:
    for record in records:
        if isinstance(record.get("ts"), int):
            record["ts"] += offset_ms
        yield record


def last_ts(path: Path, fmt: str, columns: str | None) -> int:
    return max(
        (r["ts"] for r in iter_raw(path, fmt, columns) if isinstance(r.get("ts"), int)), default=0
    )


def send_records(
    settings: Settings,
    records: Iterable[dict[str, Any]],
    *,
    topic: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    task: Any = None,
) -> ProduceReport:
    """Send contract records keyed by user id; count delivery reports."""
    from confluent_kafka import KafkaException, Producer

    report = ProduceReport()
    producer = Producer(producer_config(settings))
    topic = topic or settings.topic_events

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            report.delivered += 1
        else:
            report.failed += 1
            if len(report.errors) < 10:
                report.errors.append(str(err))

    pacer = Pacer(rate, speedup)
    started = time.monotonic()
    for record in records:
        if limit is not None and report.sent >= limit:
            break
        pacer.wait(record.get("ts"))
        key = record.get("user_id")
        value = orjson.dumps(record)
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=str(key).encode() if key is not None else None,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                raise ProduceError(f"cannot produce to {topic}: {exc}") from exc
        report.sent += 1
        producer.poll(0)
        if progress is not None and report.sent % 500 == 0:
            progress.update(task, completed=report.sent)
    remaining = producer.flush(60)
    if remaining:
        report.failed += remaining
        report.errors.append(f"{remaining} records not delivered within 60s")
    report.seconds = time.monotonic() - started
    if progress is not None:
        progress.update(task, completed=report.sent)
    return report


def produce_file(
    settings: Settings,
    path: Path,
    *,
    fmt: str = "auto",
    columns: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    shift_to_now: bool = False,
    show_progress: bool = True,
) -> ProduceReport:
    """Replay one file; raise ProduceError when nothing can be sent, Unreachable (one line
    naming the address) when no broker answers within INTEREST_KAFKA_CONNECT_TIMEOUT_S."""
    check_reachable(settings)
    try:
        records: Iterable[dict[str, Any]] = iter_raw(path, fmt, columns)
        if shift_to_now:
            offset = int(time.time() * 1000) - last_ts(path, fmt, columns)
            records = shifted(records, offset)
        total = count_lines(path)
        if limit is not None:
            total = min(total, limit)
        with Progress(
            TextColumn("[bold]producing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not show_progress,
        ) as progress:
            task = progress.add_task("events", total=total)
            return send_records(
                settings,
                records,
                rate=rate,
                speedup=speedup,
                limit=limit,
                progress=progress,
                task=task,
            )
    except DataFormatError as exc:
        raise ProduceError(str(exc)) from exc
