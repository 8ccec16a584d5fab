"""What the pipeline does per second, measured phase by phase in one run, repeated and interleaved.

    python bench/bench_pipeline.py --events 100000 --users 20000 [--repeat 3]
                                   [--bootstrap HOST:PORT] [--skip PHASE ...]
                                   [--baseline PATH] [--set INTEREST_X=VALUE ...]

One synthetic stream (stream.tools.synthetic.generate, seed 5, starting one hour ago) fills
an 8-partition topic once. Then ``--repeat`` rounds each run every Kafka phase once, so a
burst of load from the rest of the (shared, 2-core) machine hits one round, not one phase:

  raw           a plain aiokafka consumer group reading the whole topic (the baseline)
  trending_off  one worker, INTEREST_TRENDING_ENABLED=false: events/s applied
  rescore_off   one worker, INTEREST_RESCORE_INTERVAL_MS=3600000 (states are flushed, nobody
                is rescored): events/s applied
  backlog       the rescore_off worker stopped with SIGTERM and restarted on the same app id
                and data directory with the normal interval: its pending scan finds every
                applied-but-unpublished user; users/s published, first to last publication
  two_workers   two `interest worker` processes in one group: events/s of both together
  full          one worker, everything on: events/s applied

Events/s are "first to last event applied", from the workers' /metrics
(interest_events_total + interest_events_duplicate_total) polled every 0.1 s. Every worker
runs on its own app id and recommendations topic (so nothing published by one run is
restored by another) with the production defaults of INTEREST_RESCORE_INTERVAL_MS,
INTEREST_MAX_CATEGORIES and INTEREST_MAX_ITEMS.

After the last round, the last ``full`` worker publishes its backlog and then:

  latency       events of NEW users are sent live at 50% of the median full-path rate for
                --latency-seconds, --repeat windows; per message: the recommendation
                record's Kafka timestamp minus its ``as_of`` (its newest event's ``ts``, set
                at send time); and the worker's own interest_event_to_recommendation_seconds
                histogram over the same window

and, offline on the same events (no Kafka, one process, best of --stage-repeats):

  stages        us/event for decode (EventParser.parse_batch, fetches of 1000 per partition),
                fold (fold_batch), state encode (codec.encode per changed state per flush of
                --flush-fetches fetches), trending forward (group per category + orjson);
                us/user for ranking batches of 256 without a model: candidates (gather +
                generate_batch), features (components_of + blend_scores), top-k, publish
                (the message JSON as Publisher.publish builds it)

With --baseline PATH (another checkout of the project, e.g. an older commit), every round
also runs trending_off, rescore_off, backlog and full for that checkout, each right beside
the candidate's (who goes first alternates by round). Its workers are this interpreter run
in PATH (working directory and PYTHONPATH), on the same topic, each with its own app id and
recommendations topic, given only the INTEREST_ settings its Settings know. The latency
phase then runs on one worker per version, each on its own copy of the topic (on the shared
one, each would also fold the other's live events), at 50% of that version's median
full-path rate, window w of both back to back. The JSON adds "baseline" (its runs, spreads,
commit, settings not passed) and "comparison" (per phase: both spreads and the per-round
ratios candidate/baseline); the summary prints both side by side with the ratio.

Results: bench/results/pipeline.json (every run's value, min/median/max, settings, cpu
count, date, git commit and the files modified in the tree) and a summary table. Figures
are only compared within one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import inspect
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.runinfo import git_info  # noqa: E402
from stream.tools import broker  # noqa: E402
from stream.tools.synthetic import generate  # noqa: E402
from tests.support.harness import (  # noqa: E402
    Stack,
    WorkerProc,
    metric_value,
    produce,
)
from tests.support.helpers import poll_until  # noqa: E402

PHASES = (
    "raw",
    "trending_off",
    "rescore_off",
    "backlog",
    "two_workers",
    "full",
    "latency",
    "stages",
)
PARTITIONS = 8
POLL_S = 0.1
QUIET_S = 1.0  # a counter unchanged this long (and complete) means the work is done
RUNNING_MARKER = "worker.running"  # stream.worker.main.RUNNING_MARKER (not imported: faust)
BENCH_ENV = {  # the production defaults, where tests.support.harness.Stack sets test values
    "INTEREST_RESCORE_INTERVAL_MS": "500",
    "INTEREST_MAX_CATEGORIES": "64",
    "INTEREST_MAX_ITEMS": "100",
    "INTEREST_LOG_LEVEL": "WARNING",
}
# events handled: applied, skipped as duplicates, or rejected (synthetic streams with few
# users may stretch past the 1-day future limit; those records go to the dead-letter topic)
# Kafka's own default (the single-node test broker sets 0): workers started together join
# the group's first generation together instead of the first taking every partition, folding
# and then forgetting them at the next rebalance. Not applied to a broker given by --bootstrap.
BROKER_OVERRIDES = {"group.initial.rebalance.delay.ms": "3000"}
APPLIED = (
    "interest_events_total",
    "interest_events_duplicate_total",
    "interest_events_rejected_total",
)
PUBLISHED = "interest_recommendations_published_total"
LATENCY_HIST = "interest_event_to_recommendation_seconds"


ENV_PREFIX = "INTEREST_"
# what --baseline compares, per round: phase -> (key of a run, unit, row title)
COMPARED = {
    "full": ("events_per_s", "events/s", "one worker, full path"),
    "rescore_off": ("events_per_s", "events/s", "one worker, rescoring off"),
    "backlog": ("users_per_s", "users/s", "backlog rescoring (no events)"),
    "trending_off": ("events_per_s", "events/s", "one worker, trending off"),
}


class BenchError(Exception):
    """A phase could not be measured; the message says what was awaited and what was seen."""


# --------------------------------------------------------------------------- versions


def checkout_settings(repo: Path) -> dict[str, Any]:
    """The settings another checkout knows, asked of its own code (a child process run as
    its workers are: that directory as working directory and PYTHONPATH, this interpreter).
    Its Settings live in stream.settings (0.2.0) or stream.config (later)."""
    code = (
        "import json, sys, stream\n"
        "try:\n"
        "    from stream.settings import Settings\n"
        "except ImportError:\n"
        "    from stream.config import Settings\n"
        "print(json.dumps({'fields': sorted(Settings.model_fields), "
        "'extra': Settings.model_config.get('extra'), 'module': Settings.__module__, "
        "'file': sys.modules[Settings.__module__].__file__, 'package': stream.__file__}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env = {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"--baseline {repo}: cannot read its settings:\n{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("package", "file"):  # an installed (editable) copy must not shadow it
        if not Path(info[key]).resolve().is_relative_to(repo.resolve()):
            raise SystemExit(f"--baseline {repo}: its settings were read from {info[key]}")
    return info


class CheckoutWorker(WorkerProc):
    """An `interest worker` of another checkout: started from that directory (working
    directory and PYTHONPATH) with this interpreter, given only the INTEREST_ settings
    that version knows (``known``: lower-case field names); the others are left out and
    named in ``dropped``."""

    def __init__(
        self,
        stack: Stack,
        data_dir: Path,
        name: str,
        *,
        repo: Path,
        known: set[str],
        **extra_env: str,
    ) -> None:
        super().__init__(stack, data_dir, name, **extra_env)
        self.repo = repo
        self.known = known
        self.dropped: list[str] = []

    def start(self) -> CheckoutWorker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = self.stack.env(self.data_dir, self.port, **self.extra_env)
        self.dropped = sorted(
            k
            for k in env
            if k.startswith(ENV_PREFIX)
            and k != "INTEREST_CONFIG"
            and k[len(ENV_PREFIX) :].lower() not in self.known
        )
        for k in self.dropped:
            del env[k]
        env["PYTHONPATH"] = str(self.repo)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            cwd=self.repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self


@dataclass
class Version:
    """One checkout under test: the candidate (this one) or the --baseline."""

    label: str  # "candidate" / "baseline"
    repo: Path
    tag: str  # prefix of its app ids, worker names and directories ("" for the candidate)
    runs: dict[str, list[dict[str, Any]]]
    known: set[str] | None = None  # settings it knows; None: this checkout, all of them
    settings_info: dict[str, Any] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)  # settings not passed to its workers
    latency_worker: dict[str, Any] = field(default_factory=dict)


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str | Callable[[], str],
    interval_s: float = POLL_S,
) -> Any:
    """Poll until truthy, bounded; a timeout is a BenchError."""
    return poll_until(
        predicate, timeout_s, what, interval_s, error=BenchError, reraise=(BenchError,)
    )


def spread(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    if not vals:
        return {"runs": [], "min": None, "median": None, "max": None}
    return {
        "runs": vals,
        "min": min(vals),
        "median": statistics.median(vals),
        "max": max(vals),
    }


def records(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["user_id"].encode(), orjson.dumps(e)) for e in events]


def applied_count(text: str) -> float:
    return sum(metric_value(text, name) for name in APPLIED)


def alive(worker: WorkerProc) -> None:
    if worker.proc is None or worker.proc.poll() is not None:
        code = None if worker.proc is None else worker.proc.returncode
        raise BenchError(f"worker {worker.name} exited ({code}); log:\n{worker.log_tail(30)}")


# --------------------------------------------------------------------------- Kafka helpers


async def raw_consume(bootstrap: str, topic: str, total: int, timeout_s: float) -> float:
    """Seconds for a fresh aiokafka group consumer to read ``total`` records (first fetch
    with records to the last)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=1000,
    )
    await consumer.start()
    seen = 0
    start = None
    deadline = time.monotonic() + timeout_s
    try:
        while seen < total:
            if time.monotonic() > deadline:
                raise BenchError(f"raw consumer read {seen} of {total} in {timeout_s:g} s")
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            n = sum(len(v) for v in batch.values())
            if n and start is None:
                start = time.perf_counter()
            seen += n
    finally:
        await consumer.stop()
    return time.perf_counter() - (start or time.perf_counter())


def delete_topics(bootstrap: str, prefixes: Sequence[str], names: Sequence[str]) -> None:
    """Drop a finished run's topics so the broker does not accumulate hundreds of them."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = admin.list_topics(timeout=10).topics
    except Exception:
        return
    doomed = [t for t in existing if t in names or any(t.startswith(p) for p in prefixes)]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort: a leftover costs memory
                future.result(timeout=30)


def group_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` not yet committed by consumer group ``group``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in meta.partitions]
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of one Prometheus histogram (le -> count)."""
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                out[bound] = out.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantiles(
    before: dict[float, float], after: dict[float, float], qs: Sequence[float]
) -> dict[str, Any]:
    """Quantiles of the observations made between two scrapes, as Prometheus'
    histogram_quantile computes them (linear within a bucket; the +Inf bucket answers
    with the highest finite bound, flagged)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0.0
    out: dict[str, Any] = {"count": int(total)}
    for q in qs:
        key = f"p{round(q * 100):d}_s"
        if total <= 0:
            out[key] = None
            continue
        rank = q * total
        lower, prev = 0.0, 0.0
        for bound, c in zip(bounds, cum, strict=True):
            if c >= rank:
                if bound == float("inf"):
                    out[key] = f">{lower:g}"
                else:
                    out[key] = lower + (bound - lower) * ((rank - prev) / max(c - prev, 1e-12))
                break
            lower, prev = bound, c
    return out


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, bootstrap: str, tmp: Path) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.suffix = uuid.uuid4().hex[:8]
        self.stack = Stack(
            bootstrap=bootstrap, suffix=self.suffix, partitions=PARTITIONS, extra_env=BENCH_ENV
        )
        self.skip = set(args.skip or ())
        self.workers: list[WorkerProc] = []
        self.runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.errors: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.total = 0
        self.n_users = 0
        self.keep: WorkerProc | None = None  # the last full-path worker, for the latency phase
        self.keep_recs = ""
        self.keep_env: dict[str, str] = {}
        self.candidate = Version("candidate", REPO, "", self.runs)
        self.baseline: Version | None = None
        if args.baseline:
            info = args.baseline_settings  # checkout_settings(args.baseline), read in main
            self.baseline = Version(
                "baseline",
                args.baseline,
                "base-",
                defaultdict(list),
                known=set(info["fields"]),
                settings_info=info,
            )
        self.versions = [self.candidate] + ([self.baseline] if self.baseline else [])

    def label(self, phase: str, ver: Version) -> str:
        """A phase's name in messages: with --baseline, also whose run it is."""
        return phase if self.baseline is None else f"{phase} [{ver.label}]"

    # ------------------------------------------------------------------ workers

    def app(self, tag: str, rnd: int) -> dict[str, str]:
        """A fresh consumer group, changelogs and recommendations topic for one run."""
        app_id = f"{tag}-{self.suffix}-{rnd}"
        return {"INTEREST_APP_ID": app_id, "INTEREST_TOPIC_RECOMMENDATIONS": f"recs-{app_id}"}

    def start(
        self,
        name: str,
        env: dict[str, str],
        data_dir: Path | None = None,
        ver: Version | None = None,
    ) -> WorkerProc:
        ver = ver or self.candidate
        data_dir = data_dir or self.tmp / name
        worker: WorkerProc
        if ver.known is None:
            worker = WorkerProc(self.stack, data_dir, name, **env).start()
        else:
            worker = CheckoutWorker(
                self.stack, data_dir, name, repo=ver.repo, known=ver.known, **env
            ).start()
            ver.dropped.update(worker.dropped)
        worker.started_at = time.perf_counter()  # type: ignore[attr-defined]
        self.workers.append(worker)
        return worker

    def stop(self, worker: WorkerProc) -> bool:
        """SIGTERM; True when the worker stopped cleanly (its running marker is gone)."""
        worker.stop(timeout_s=90)
        if worker in self.workers:
            self.workers.remove(worker)
        return not (worker.data_dir / RUNNING_MARKER).exists()

    def cleanup(self, env: dict[str, str], dirs: Sequence[Path]) -> None:
        delete_topics(
            self.bootstrap, [env["INTEREST_APP_ID"] + "-"], [env["INTEREST_TOPIC_RECOMMENDATIONS"]]
        )
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)

    def stop_all(self) -> None:
        for worker in list(self.workers):
            worker.stop(timeout_s=30)
        self.workers.clear()

    # ------------------------------------------------------------------ measurements

    def measure_apply(self, workers: list[WorkerProc], timeout_s: float) -> dict[str, Any]:
        """Events/s applied by ``workers`` together, first to last event applied.

        With one worker the run ends when its counter reaches the topic's size. With
        several, a rebalance may make a record be folded twice (folded, forgotten unflushed,
        read again by the new owner), so the run ends when the sum is at least the size and
        has not moved for QUIET_S; ``steady`` is the rate after every worker owns its
        partitions (the ratio to one worker uses it), ``whole`` includes the rebalances."""
        multi = len(workers) > 1
        first: tuple[float, float] | None = None
        last: tuple[float, float] = (0.0, -1.0)
        stable: tuple[float, float] | None = None
        deadline = time.monotonic() + timeout_s
        count = 0.0
        while True:
            for w in workers:
                alive(w)
            texts = [w.metrics() for w in workers]
            now = time.perf_counter()
            if all(texts):
                count = sum(applied_count(t) for t in texts)
                if count > 0 and first is None:
                    first = (now, count)
                if count != last[1]:
                    last = (now, count)
                if multi and stable is None and first is not None and self._stable(workers):
                    stable = (now, count)
                done = count >= self.total and (not multi or now - last[0] >= QUIET_S)
                if done:
                    break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{'+'.join(w.name for w in workers)} applied {count:g} of {self.total} "
                    f"events in {timeout_s:g} s; "
                    + "; ".join(f"{w.name}: {w.summary()}" for w in workers)
                )
            time.sleep(POLL_S)
        assert first is not None
        started = min(getattr(w, "started_at", first[0]) for w in workers)
        out: dict[str, Any] = {
            "events_counted": last[1],
            "seconds": last[0] - first[0],
            "events_per_s": (last[1] - first[1]) / max(last[0] - first[0], 1e-9),
            "start_to_first_event_s": first[0] - started,
        }
        if multi:
            out["whole_events_per_s"] = out["events_per_s"]
            out["extra_applications"] = last[1] - self.total  # folded twice across rebalances
            if stable is not None and last[0] - stable[0] > 0.5:
                out["steady_from_s"] = stable[0] - first[0]
                out["steady_events"] = last[1] - stable[1]
                out["events_per_s"] = (last[1] - stable[1]) / (last[0] - stable[0])
            else:
                out["steady_from_s"] = None  # the assignment settled too late to measure
        return out

    def _stable(self, workers: list[WorkerProc]) -> bool:
        owned: list[int] = []
        for w in workers:
            h = w.health()
            if not h or h.get("in_recovery") or not h.get("active_partitions"):
                return False
            owned += h["active_partitions"]
        return sorted(owned) == list(range(PARTITIONS))

    def measure_backlog(self, worker: WorkerProc, timeout_s: float) -> dict[str, Any]:
        """Users/s published by a restarted worker with no events arriving: from the first
        publication to the last, until no user is dirty and the count stops growing."""
        first: tuple[float, float] | None = None
        last: tuple[float, float] = (0.0, -1.0)
        ready_at: float | None = None
        deadline = time.monotonic() + timeout_s
        stall_s = 20.0
        published = applied = 0.0
        dirty: Any = None
        while True:
            alive(worker)
            text = worker.metrics()
            health = worker.health()
            now = time.perf_counter()
            if text and health:
                published = metric_value(text, PUBLISHED)
                applied = applied_count(text)
                dirty = health.get("dirty_users")
                if (
                    ready_at is None
                    and health.get("active_partitions")
                    and not health.get("in_recovery")
                ):
                    ready_at = now
                if published > 0 and first is None:
                    first = (now, published)
                if published != last[1]:
                    last = (now, published)
                settled = dirty == 0 and ready_at is not None and now - last[0] >= QUIET_S
                if settled and published >= self.n_users:
                    break
                if settled and now - max(last[0], ready_at) >= stall_s:
                    raise BenchError(
                        f"backlog: no user dirty and nothing published for {stall_s:g} s, but "
                        f"only {published:g} of {self.n_users} users published (the pending "
                        f"scan did not find them?); {worker.summary()}; log:\n"
                        f"{worker.log_tail(20)}"
                    )
            if time.monotonic() > deadline:
                raise BenchError(
                    f"backlog: published {published:g} of {self.n_users} users in "
                    f"{timeout_s:g} s (dirty {dirty}); {worker.summary()}"
                )
            time.sleep(POLL_S)
        if first is None:
            raise BenchError("backlog: nothing published")
        started = getattr(worker, "started_at", first[0])
        log = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
        found = [int(n) for n in re.findall(r"found (\d+) users applied but not yet", log)]
        return {
            "users_published": last[1],
            "seconds": last[0] - first[0],
            "users_per_s": (last[1] - first[1]) / max(last[0] - first[0], 1e-9),
            "restart_to_ready_s": (ready_at or started) - started,
            "restart_to_first_publication_s": first[0] - started,
            "pending_scan_found": sum(found),
            "events_applied_again_at_restart": applied,  # folded, not flushed before SIGTERM
        }

    def wait_published(self, worker: WorkerProc, timeout_s: float) -> float:
        """Until the worker has no dirty user and its published count stands still."""
        state = {"count": -1.0, "since": time.perf_counter()}

        def quiet() -> bool:
            alive(worker)
            health, text = worker.health(), worker.metrics()
            if not health or not text:
                return False
            count, now = metric_value(text, PUBLISHED), time.perf_counter()
            if count != state["count"]:
                state["count"], state["since"] = count, now
            return health.get("dirty_users") == 0 and now - state["since"] >= QUIET_S

        wait_until(
            quiet,
            timeout_s,
            lambda: f"{worker.name} did not publish its backlog: {worker.summary()}",
            interval_s=0.2,
        )
        return state["count"]

    # ------------------------------------------------------------------ phases

    def phase_raw(self, rnd: int) -> None:
        seconds = asyncio.run(
            raw_consume(self.bootstrap, self.stack.events, self.total, self.apply_timeout)
        )
        rate = self.total / max(seconds, 1e-9)
        self.runs["raw"].append({"round": rnd, "events_per_s": rate, "seconds": seconds})
        print(f"  raw aiokafka consumer: {rate:,.0f} events/s")

    def phase_one(
        self,
        rnd: int,
        phase: str,
        extra: dict[str, str],
        keep: bool = False,
        ver: Version | None = None,
    ) -> None:
        ver = ver or self.candidate
        env = {**self.app(ver.tag + phase, rnd), **extra}
        worker = self.start(f"{ver.tag}{phase}-{rnd}", env, ver=ver)
        try:
            m = self.measure_apply([worker], self.apply_timeout)
        except BaseException:
            self.stop(worker)
            self.cleanup(env, [worker.data_dir])
            raise
        m["round"] = rnd
        ver.runs[phase].append(m)
        print(
            f"  {self.label(phase, ver)}: {m['events_per_s']:,.0f} events/s ({m['seconds']:.1f} s)"
        )
        if keep:
            self.keep, self.keep_recs = worker, env["INTEREST_TOPIC_RECOMMENDATIONS"]
            self.keep_env = env
            return
        m["clean_stop"] = self.stop(worker)
        self.cleanup(env, [worker.data_dir])

    def phase_rescore_off_and_backlog(self, rnd: int, ver: Version | None = None) -> None:
        ver = ver or self.candidate
        env = {**self.app(f"{ver.tag}rescore-off", rnd), "INTEREST_RESCORE_INTERVAL_MS": "3600000"}
        data_dir = self.tmp / f"{ver.tag}rescore-off-{rnd}"
        worker = self.start(f"{ver.tag}rescore_off-{rnd}", env, data_dir, ver=ver)
        dirs = [data_dir]
        try:
            m = self.measure_apply([worker], self.apply_timeout)
            published = metric_value(worker.metrics(), PUBLISHED)
            m.update(round=rnd, published_while_applying=published)
            m["clean_stop"] = self.stop(worker)
            ver.runs["rescore_off"].append(m)
            print(
                f"  {self.label('rescore_off', ver)}: {m['events_per_s']:,.0f} events/s "
                f"({m['seconds']:.1f} s, {published:g} published, clean stop {m['clean_stop']})"
            )
            if "backlog" in self.skip:
                return
            restart_env = {
                **env,
                "INTEREST_RESCORE_INTERVAL_MS": BENCH_ENV["INTEREST_RESCORE_INTERVAL_MS"],
                "INTEREST_LOG_LEVEL": "INFO",  # for the pending scan's "found N users" line
            }
            again = self.start(f"{ver.tag}backlog-{rnd}", restart_env, data_dir, ver=ver)
            try:
                b = self.measure_backlog(again, self.publish_timeout)
            finally:
                self.stop(again)
            b["round"] = rnd
            ver.runs["backlog"].append(b)
            print(
                f"  {self.label('backlog', ver)}: {b['users_per_s']:,.0f} users/s "
                f"({b['users_published']:g} users in {b['seconds']:.1f} s; scan found "
                f"{b['pending_scan_found']}, {b['events_applied_again_at_restart']:g} events "
                "applied again)"
            )
        finally:
            self.stop(worker)
            self.cleanup(env, dirs)

    def phase_two_workers(self, rnd: int) -> None:
        env = self.app("two", rnd)
        pair = [self.start(f"two_workers-{rnd}-{n}", env) for n in (1, 2)]
        try:
            m = self.measure_apply(pair, self.apply_timeout)
            m["round"] = rnd
            group = env["INTEREST_APP_ID"]
            try:  # the quiet counter was the end of the work, not a stall
                wait_until(
                    lambda: group_lag(self.bootstrap, group, self.stack.events) == 0,
                    60,
                    "the two workers' group did not commit the whole topic",
                    interval_s=0.5,
                )
                m["group_committed_everything"] = True
            except BenchError as exc:
                m["group_committed_everything"] = str(exc)
            per = [{"worker": w.name, "applied": applied_count(w.metrics())} for w in pair]
            m["per_worker"] = per
            self.runs["two_workers"].append(m)
            steady = m.get("steady_from_s")
            print(
                f"  two_workers: {m['events_per_s']:,.0f} events/s together "
                f"(steady from {steady if steady is None else round(steady, 1)} s; whole run "
                f"{m['whole_events_per_s']:,.0f}; {m['extra_applications']:g} folded twice)"
            )
        finally:
            for w in pair:
                self.stop(w)
            self.cleanup(env, [w.data_dir for w in pair])

    def run_round(self, rnd: int, last: bool) -> None:
        """One run of every phase; with --baseline, each of the four compared phases runs
        for both versions back to back (candidate first in odd rounds, baseline first in
        even ones, so that neither always runs on the machine the other just warmed)."""
        print(f"round {rnd + 1} of {self.args.repeat}")
        # with --baseline the latency phase has workers of its own (phase_latency_versions)
        keep = last and "latency" not in self.skip and self.baseline is None
        order = self.versions if rnd % 2 == 0 else self.versions[::-1]
        cand = self.candidate
        trending_off = {"INTEREST_TRENDING_ENABLED": "false"}
        steps: list[tuple[str, Version, Callable[[], None]]] = [
            ("raw", cand, lambda: self.phase_raw(rnd)),
            *[
                (
                    "trending_off",
                    v,
                    lambda v=v: self.phase_one(rnd, "trending_off", trending_off, ver=v),
                )
                for v in order
            ],
            *[
                ("rescore_off", v, lambda v=v: self.phase_rescore_off_and_backlog(rnd, v))
                for v in order
            ],
            ("two_workers", cand, lambda: self.phase_two_workers(rnd)),
            *[
                ("full", v, lambda v=v: self.phase_one(rnd, "full", {}, keep=keep, ver=v))
                for v in order
            ],
        ]
        if "rescore_off" in self.skip and "backlog" not in self.skip and rnd == 0:
            self.errors.append("backlog: needs the rescore_off phase (skipped)")
        for name, ver, step in steps:
            if name in self.skip:
                continue
            try:
                step()
            except BenchError as exc:
                msg = f"round {rnd + 1} {self.label(name, ver)}: {exc}"
                self.errors.append(msg)
                print(f"  FAILED {msg}")

    # ------------------------------------------------------------------ latency

    def phase_latency(self, rate: float) -> None:
        worker = self.keep
        assert worker is not None
        from confluent_kafka import Consumer

        try:
            self.wait_published(worker, self.publish_timeout)
            consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                    "auto.offset.reset": "latest",
                    "enable.auto.commit": False,
                }
            )
            consumer.subscribe([self.keep_recs])
            wait_until(
                lambda: consumer.poll(0.2) is None and consumer.assignment(),
                30,
                "latency consumer got no partitions",
            )
            users = self.args.latency_users or self.args.users
            n = max(1, int(rate * self.args.latency_seconds))
            live = generate(users, n, seed=99, start_ms=int(time.time() * 1000))
            try:
                for window in range(self.args.repeat):
                    self._latency_window(worker, consumer, live, rate, window, users)
            finally:
                consumer.close()
        finally:
            self.stop(worker)
            self.cleanup(self.keep_env, [worker.data_dir])
            self.keep = None

    def _latency_window(
        self,
        worker: WorkerProc,
        consumer: Any,
        live: list[dict[str, Any]],
        rate: float,
        window: int,
        users: int,
        topic: str | None = None,
        ver: Version | None = None,
    ) -> None:
        """One window: ``live`` sent to ``topic`` (default: the bench's events topic) at
        ``rate``, recorded in ``ver``'s runs (default: the candidate's)."""
        topic = topic or self.stack.events
        ver = ver or self.candidate
        prefix = f"live{window}-"
        self.wait_published(worker, self.publish_timeout)
        before = histogram(worker.metrics(), LATENCY_HIST)
        sent = {"n": 0, "seconds": 0.0, "error": None}

        def send() -> None:
            from confluent_kafka import Producer

            try:
                producer = Producer(
                    {
                        "bootstrap.servers": self.bootstrap,
                        "partitioner": "murmur2_random",
                        "linger.ms": 2,
                    }
                )
                start = time.monotonic()
                for i, e in enumerate(live):
                    delay = start + i / rate - time.monotonic()
                    if delay > 0.002:
                        time.sleep(delay)
                    value = {**e, "user_id": prefix + e["user_id"], "ts": time.time_ns() // 10**6}
                    while True:
                        try:
                            producer.produce(
                                topic,
                                key=value["user_id"].encode(),
                                value=orjson.dumps(value),
                            )
                            break
                        except BufferError:
                            producer.poll(0.01)
                    producer.poll(0)
                    sent["n"] = i + 1
                sent["seconds"] = time.monotonic() - start
                producer.flush(30)
            except Exception as exc:  # reported, not raised in a thread
                sent["error"] = repr(exc)

        thread = threading.Thread(target=send, daemon=True)
        lat: list[float] = []
        thread.start()
        last_msg = time.monotonic()
        deadline = time.monotonic() + self.args.latency_seconds + 120
        while True:
            msg = consumer.poll(0.2)
            now = time.monotonic()
            if msg is not None and not msg.error() and msg.value() is not None:
                body = orjson.loads(msg.value())
                if body.get("user_id", "").startswith(prefix):
                    _, ts = msg.timestamp()
                    lat.append(ts - body["as_of"])
                    last_msg = now
            if not thread.is_alive() and now - last_msg >= 2.0:
                health = worker.health()
                if health and health.get("dirty_users") == 0:
                    break
            if now > deadline:
                self.errors.append(
                    f"{self.label('latency', ver)} window {window}: not drained in time"
                )
                break
        thread.join(5)
        after = histogram(worker.metrics(), LATENCY_HIST)
        arr = np.array(lat, dtype=float)

        def pct(q: float) -> float | None:
            return float(np.percentile(arr, q)) if len(arr) else None

        result = {
            "window": window,
            "rate_events_per_s": rate,
            "events_sent": sent["n"],
            "send_seconds": sent["seconds"],
            "send_error": sent["error"],
            "users": users,
            "messages": len(lat),
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "max_ms": float(arr.max()) if len(arr) else None,
            "worker_histogram": histogram_quantiles(before, after, (0.5, 0.95, 0.99)),
            "latencies_ms": lat,  # dropped from the JSON (kept for the pooled percentiles)
        }
        ver.runs["latency"].append(result)
        print(
            f"  {self.label('latency', ver)} window {window + 1}: {len(lat)} messages, "
            f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
            f"worker histogram {result['worker_histogram']}"
        )

    def make_events_topic(self, name: str) -> None:
        """An events topic like the bench's (PARTITIONS partitions, the project's configs)."""
        from stream.config import load_settings
        from stream.worker.kafka_clients import ensure_topics

        ensure_topics(
            load_settings(
                None,
                {
                    "kafka_bootstrap": self.bootstrap,
                    "topic_events": name,
                    "topic_dlq": self.stack.dlq,
                    "topic_recommendations": self.stack.recommendations,
                    "app_id": f"app-{self.suffix}",
                    "events_partitions": PARTITIONS,
                },
            )
        )

    def phase_latency_versions(self) -> None:
        """--baseline: the latency phase of both versions, window by window.

        The bench's topic cannot serve: a worker on it would also fold (and publish for)
        the other version's live events, so each version gets a copy of the topic (the
        same records), one worker that applies it and publishes its backlog (not
        measured), then its windows at 50% of its own median full-path rate; window w of
        both versions run back to back (order alternating). Between its windows a worker
        is idle: no events reach it."""
        from confluent_kafka import Consumer

        ready: list[tuple[Version, WorkerProc, Any, list[dict[str, Any]], float, str]] = []
        teardown: list[tuple[WorkerProc, dict[str, str], str]] = []
        users = self.args.latency_users or self.args.users
        try:
            for ver in self.versions:
                full = [r["events_per_s"] for r in ver.runs.get("full", [])]
                if not full:
                    self.errors.append(
                        f"{self.label('latency', ver)}: needs the full phase (skipped or failed)"
                    )
                    continue
                rate = 0.5 * statistics.median(full)
                topic = f"events-{ver.tag}latency-{self.suffix}"
                env = {**self.app(f"{ver.tag}latency", 0), "INTEREST_TOPIC_EVENTS": topic}
                consumer = None
                try:
                    self.make_events_topic(topic)
                    produce(self.bootstrap, topic, records(self.events))
                    worker = self.start(f"{ver.tag}latency", env, ver=ver)
                    teardown.append((worker, env, topic))
                    m = self.measure_apply([worker], self.apply_timeout)
                    published = self.wait_published(worker, self.publish_timeout)
                    consumer = Consumer(
                        {
                            "bootstrap.servers": self.bootstrap,
                            "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                            "auto.offset.reset": "latest",
                            "enable.auto.commit": False,
                        }
                    )
                    consumer.subscribe([env["INTEREST_TOPIC_RECOMMENDATIONS"]])
                    wait_until(
                        lambda c=consumer: c.poll(0.2) is None and c.assignment(),
                        30,
                        "latency consumer got no partitions",
                    )
                except BenchError as exc:
                    if consumer is not None:
                        consumer.close()
                    self.errors.append(f"{self.label('latency', ver)}: {exc}")
                    print(f"  FAILED {self.label('latency', ver)}: {exc}")
                    continue
                ver.latency_worker = {
                    "topic": topic,
                    "rate_events_per_s": rate,
                    "prepare_events_per_s": m["events_per_s"],
                    "prepare_published": published,
                }
                print(
                    f"latency [{ver.label}]: worker ready on {topic} (applied at "
                    f"{m['events_per_s']:,.0f} events/s, {published:g} published); live "
                    f"events at {rate:,.0f} events/s"
                )
                n = max(1, int(rate * self.args.latency_seconds))
                live = generate(users, n, seed=99, start_ms=int(time.time() * 1000))
                ready.append((ver, worker, consumer, live, rate, topic))
            for window in range(self.args.repeat):
                for ver, worker, consumer, live, rate, topic in (
                    ready if window % 2 == 0 else ready[::-1]
                ):
                    try:
                        alive(worker)
                        self._latency_window(
                            worker, consumer, live, rate, window, users, topic=topic, ver=ver
                        )
                    except BenchError as exc:
                        self.errors.append(f"{self.label('latency', ver)} window {window}: {exc}")
                        print(f"  FAILED {self.label('latency', ver)} window {window}: {exc}")
        finally:
            for _ver, _worker, consumer, *_ in ready:
                with contextlib.suppress(Exception):
                    consumer.close()
            for worker, env, topic in teardown:
                self.stop(worker)
                self.cleanup(env, [worker.data_dir])
                delete_topics(self.bootstrap, [], [topic])

    @property
    def apply_timeout(self) -> float:
        return 120 + self.total / 200

    @property
    def publish_timeout(self) -> float:
        return 120 + self.n_users / 50


# --------------------------------------------------------------------------- stage costs


def stage_costs(
    events: list[dict[str, Any]],
    repeats: int = 5,
    fetch: int = 1000,
    flush_fetches: int = 5,
    batch_users: int = 256,
    max_batches: int = 40,
) -> dict[str, Any]:
    """Per-stage costs of the apply and rescore paths, offline, best of ``repeats``.

    Kept in one function, imports inside, so that a renamed core function is fixed here
    without touching the rest. Fetches are built like the worker's: the events of one
    partition (murmur2 of the user id, 8 partitions) in offset order, ``fetch`` at a time.
    """
    from aiokafka.partitioner import murmur2

    from stream.core import candidates as cand
    from stream.core import codec, features, messages
    from stream.core import trending as tr
    from stream.core.interest import InterestConfig, fold_batch, new_state

    try:
        from stream.config import event_parser, interest_config, load_settings, trend_config

        settings = load_settings(None, {})
        parser, config, tconfig = (
            event_parser(settings),
            interest_config(settings),
            trend_config(settings),
        )
    except ImportError:
        from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS
        from stream.core.events import EventParser

        parser = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES)
        config, tconfig = InterestConfig(), tr.TrendConfig()

    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for e in events:
        p = (murmur2(e["user_id"].encode()) & 0x7FFFFFFF) % PARTITIONS
        by_partition[p].append(orjson.dumps(e))
    fetches: list[tuple[int, int, list[bytes]]] = []  # (partition, first offset, values)
    for p, values in sorted(by_partition.items()):
        for k in range(0, len(values), fetch):
            fetches.append((p, k, values[k : k + fetch]))
    now = int(time.time() * 1000) + 60_000

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    # decode
    stamps = [[-1] * len(v) for _, _, v in fetches]
    parsed = [parser.parse_batch(v, s, now) for (_, _, v), s in zip(fetches, stamps, strict=True)]
    rejected = sum(len(rej) for _, rej in parsed)
    n_events = sum(len(batch) for batch, _ in parsed)
    decode_s = best(
        lambda: [
            parser.parse_batch(v, s, now) for (_, _, v), s in zip(fetches, stamps, strict=True)
        ]
    )

    # fold, with the worker's per-fetch arguments (one state per user, routed by slot)
    def routed(states: dict[str, Any]) -> list[tuple[list[Any], np.ndarray, list, list, list]]:
        out = []
        for (p, first, _v), (batch, _) in zip(fetches, parsed, strict=True):
            slot_of: dict[str, int] = {}
            fold_states: list[Any] = []
            slots = []
            for user in batch.user_id:
                s = slot_of.get(user)
                if s is None:
                    s = slot_of[user] = len(fold_states)
                    state = states.get(user)
                    if state is None:
                        state = states[user] = new_state(user, config)
                    fold_states.append(state)
                slots.append(s)
            offsets = (first + batch.rows).tolist()
            out.append(
                (
                    fold_states,
                    np.asarray(slots, np.int64),
                    [p] * len(batch),
                    offsets,
                    [now - 1000] * len(batch),
                )
            )
        return out

    def fold_all(encode_every: int | None = None) -> tuple[float, float, int, dict[str, Any]]:
        states: dict[str, Any] = {}
        work = routed(states)
        fold_s = encode_s = 0.0
        encodes = 0
        changed: set[str] = set()
        for n, ((batch, _), (fs, slots, srcs, offs, kts)) in enumerate(
            zip(parsed, work, strict=True)
        ):
            t0 = time.perf_counter()
            result = fold_batch(
                fs, batch, slots, config, vectors=None, sources=srcs, offsets=offs, kafka_ts=kts
            )
            fold_s += time.perf_counter() - t0
            if encode_every:
                for state, k in zip(fs, result.applied.tolist(), strict=True):
                    if k:
                        changed.add(state.user_id)
                if (n + 1) % encode_every == 0 or n == len(parsed) - 1:
                    t0 = time.perf_counter()
                    for user in changed:
                        codec.encode(states[user])
                    encode_s += time.perf_counter() - t0
                    encodes += len(changed)
                    changed.clear()
        return fold_s, encode_s, encodes, states

    fold_times, encode_times = [], []
    encodes = 0
    final: dict[str, Any] = {}
    for _ in range(repeats):
        gc.collect()
        f, e, encodes, final = fold_all(flush_fetches)
        fold_times.append(f)
        encode_times.append(e)

    # trending forward, as ApplyHandler._forward_trending
    def forward() -> None:
        for (p, first, _v), (ev, _) in zip(fetches, parsed, strict=True):
            grouped = tr.rows_by_category(ev, [p] * len(ev), (first + ev.rows).tolist())
            for category, entries in grouped.items():
                category.encode()
                orjson.dumps(entries)

    forward_s = best(forward)

    # trending snapshots from the same events (the view every worker follows)
    per_cat: dict[str, list[Any]] = defaultdict(list)
    for ev, _ in parsed:
        for i in range(len(ev)):
            if ev.category[i] is not None:
                per_cat[ev.category[i]].append(ev.event(i))
    view: dict[str, Any] = {}
    for cat, evs in per_cat.items():
        trend = tr.new_trend(cat, tconfig)
        tr.fold_trend(trend, evs, tconfig)
        view[cat] = tr.snapshot(trend, tconfig.max_items)
    top = tr.global_top(view)

    # ranking, batches of 256 users, no model
    users = list(final.values())
    batches = [users[k : k + batch_users] for k in range(0, len(users), batch_users)]
    batches = batches[:max_batches]
    n_ranked = sum(len(b) for b in batches)
    vocab = cand.VOCABULARY
    interests_of = getattr(cand, "interests_of", None)
    new_message_api = "interests_now" in inspect.signature(messages.build_message).parameters

    def rank_stages() -> dict[str, float]:
        t = dict.fromkeys(("candidates", "features", "top_k", "publish"), 0.0)
        stamp = int(time.time() * 1000)
        for states in batches:
            vocab.make_room()
            t0 = time.perf_counter()
            cols = features.gather(states, vocab=vocab)
            union = cand.generate_batch(
                cols,
                trending=view,
                global_top=top,
                retrieved=None,
                policy="demote",
                limit=200,
                vocab=vocab,
            )
            t1 = time.perf_counter()
            parts = features.components_of(
                cols, union.user, union.item, union.cat, view, top, vocab
            )
            scores = features.blend_scores(parts)
            t2 = time.perf_counter()
            ranked = cand.top_k(
                union, cand.apply_policy(scores, parts.purchased, "demote"), 20, vocab
            )
            t3 = time.perf_counter()
            if new_message_api:
                interests = interests_of(cols, vocab) if interests_of else [None] * len(states)
                for b, state in enumerate(states):
                    orjson.dumps(
                        messages.build_message(
                            state,
                            ranked.entries(b),
                            version=1,
                            model_version=None,
                            generated_at=stamp,
                            interests_now=interests[b],
                        )
                    )
            else:
                for state, items in zip(states, ranked, strict=True):
                    orjson.dumps(
                        messages.build_message(
                            state, items, version=1, model_version=None, generated_at=stamp
                        )
                    )
            t4 = time.perf_counter()
            t["candidates"] += t1 - t0
            t["features"] += t2 - t1
            t["top_k"] += t3 - t2
            t["publish"] += t4 - t3
        return t

    rank_stages()  # warm the vocabulary, as a running worker's is
    runs = [rank_stages() for _ in range(repeats)]
    ranking = {k: min(r[k] for r in runs) / n_ranked * 1e6 for k in runs[0]}

    # the pieces above must rank exactly as the worker's entry point does
    check = batches[0]
    whole = cand.recommend_batch(
        check, trending=view, global_top=top, scorer=None, k=20, policy="demote", limit=200
    )
    cols = features.gather(check, vocab=vocab)
    union = cand.generate_batch(cols, trending=view, global_top=top, policy="demote", limit=200)
    parts = features.components_of(cols, union.user, union.item, union.cat, view, top, vocab)
    mine = cand.top_k(
        union, cand.apply_policy(features.blend_scores(parts), parts.purchased, "demote"), 20, vocab
    )
    mine_lists = mine.lists() if hasattr(mine, "lists") else mine
    per_event = {
        "decode": decode_s / n_events * 1e6,
        "fold": min(fold_times) / n_events * 1e6,
        "encode": min(encode_times) / n_events * 1e6,
        "trending_forward": forward_s / n_events * 1e6,
    }
    apply_us = sum(per_event.values())
    rank_us = sum(ranking.values())
    return {
        "us_per_event": per_event,
        "us_per_user": ranking,
        "apply_total_us_per_event": apply_us,
        "rank_total_us_per_user": rank_us,
        "one_core_ceiling_events_per_s": 1e6 / apply_us,
        "one_core_ceiling_users_per_s": 1e6 / rank_us,
        "settings": {
            "events": n_events,
            "rejected": rejected,
            "fetch_records": fetch,
            "fetches": len(fetches),
            "flush_every_fetches": flush_fetches,
            "state_encodes": encodes,
            "encodes_per_event": encodes / n_events,
            "users": len(final),
            "ranked_users": n_ranked,
            "batch_users": batch_users,
            "trending_categories": len(view),
            "repeats": repeats,
            "build_message_api": "entries+interests_now" if new_message_api else "Recommended",
        },
        "staged_ranking_equals_recommend_batch": mine_lists == whole,
    }


def _stages_child(users: int, n: int, start_ms: int, repeats: int, flush_fetches: int) -> dict:
    events = generate(users, n, seed=5, start_ms=start_ms)
    return stage_costs(events, repeats=repeats, flush_fetches=flush_fetches)


def run_stages(
    args: argparse.Namespace, start_ms: int, errors: list[str], attempts: int = 3
) -> dict[str, Any] | None:
    """stage_costs in a fresh process (the same events, regenerated from the seed): the
    checkout is shared and edited while this runs, so a module caught mid-edit fails one
    attempt, and a later attempt imports it afresh. Failed attempts are kept in the result."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    failures: list[str] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(30)  # waiting for a colleague's edit to land, not a synchronisation
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            future = pool.submit(
                _stages_child,
                args.users,
                args.events,
                start_ms,
                args.stage_repeats,
                args.flush_fetches,
            )
            try:
                result = future.result(timeout=1800)
            except Exception as exc:
                failures.append(f"attempt {attempt + 1}: {exc!r}")
                print(f"  stages attempt {attempt + 1} failed: {exc!r}")
                continue
        result["failed_attempts"] = failures
        return result
    errors.append("stages: " + "; ".join(failures))
    return None


# --------------------------------------------------------------------------- report


def rates_of(runs: dict[str, list[dict[str, Any]]], phases: Sequence[str]) -> dict[str, Any]:
    return {
        phase: spread(
            [
                r["users_per_s" if phase == "backlog" else "events_per_s"]
                for r in runs.get(phase, [])
            ]
        )
        for phase in phases
    }


def per_round(
    runs_a: dict[str, list[dict[str, Any]]],
    a: str,
    runs_b: dict[str, list[dict[str, Any]]],
    b: str,
    key: str = "events_per_s",
    by: str = "round",
) -> dict[str, Any]:
    """a/b within each round (same noise), then the spread of those ratios."""
    left = {r[by]: r[key] for r in runs_a.get(a, []) if r.get(key) is not None}
    right = {r[by]: r[key] for r in runs_b.get(b, []) if r.get(key) is not None}
    return spread([left[k] / right[k] for k in sorted(left) if right.get(k)])


def latency_of(lat_runs: list[dict[str, Any]]) -> dict[str, Any]:
    pooled = np.array([x for r in lat_runs for x in r["latencies_ms"]], dtype=float)
    return {
        "windows": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in lat_runs],
        "messages": len(pooled),
        **{
            f"p{q}_ms": spread([r[f"p{q}_ms"] for r in lat_runs if r[f"p{q}_ms"] is not None])
            for q in (50, 95, 99)
        },
        "max_ms": spread([r["max_ms"] for r in lat_runs if r["max_ms"] is not None]),
        "pooled": {
            f"p{q}_ms": float(np.percentile(pooled, q)) if len(pooled) else None
            for q in (50, 95, 99)
        }
        | {"max_ms": float(pooled.max()) if len(pooled) else None},
    }


def compare(bench: Bench) -> dict[str, Any]:
    """--baseline: per compared phase, both versions' runs and spreads and the per-round
    ratios candidate/baseline; for latency, per window."""
    assert bench.baseline is not None
    cand, base = bench.candidate.runs, bench.baseline.runs
    out: dict[str, Any] = {
        "ratio": "candidate / baseline, within a round (latency: within a window index)",
    }
    for phase, (key, unit, _title) in COMPARED.items():
        out[phase] = {
            "unit": unit,
            "candidate": spread([r[key] for r in cand.get(phase, [])]),
            "baseline": spread([r[key] for r in base.get(phase, [])]),
            "ratio": per_round(cand, phase, base, phase, key),
        }
    for q in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        out[f"latency_{q}"] = {
            "unit": "ms",
            "candidate": spread([r[q] for r in cand.get("latency", []) if r[q] is not None]),
            "baseline": spread([r[q] for r in base.get("latency", []) if r[q] is not None]),
            "ratio": per_round(cand, "latency", base, "latency", q, by="window"),
        }
    return out


def summarise(bench: Bench, stages: dict[str, Any] | None, args: argparse.Namespace) -> dict:
    runs = bench.runs
    rates = rates_of(runs, ("raw", "trending_off", "rescore_off", "two_workers", "full", "backlog"))
    ratios = {
        "full_to_raw": per_round(runs, "full", runs, "raw"),
        "rescore_off_to_full": per_round(runs, "rescore_off", runs, "full"),
        "trending_on_to_off": per_round(runs, "full", runs, "trending_off"),
        "two_workers_to_one": per_round(runs, "two_workers", runs, "full"),
    }
    latency = latency_of(runs.get("latency", []))
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "settings": {
            "events": bench.total,
            "users": args.users,
            "distinct_users": bench.n_users,
            "partitions": PARTITIONS,
            "repeat": args.repeat,
            "skip": sorted(bench.skip),
            "seed": 5,
            "worker_env": BENCH_ENV,
            "latency_seconds": args.latency_seconds,
            "latency_users": args.latency_users or args.users,
            "bootstrap_given": bool(args.bootstrap),
            "broker_overrides": {} if args.bootstrap else BROKER_OVERRIDES,
        },
        "rates": rates,
        "ratios": ratios,
        "latency": latency,
        "stages": stages,
        "runs": {k: v for k, v in runs.items() if k != "latency"},
        "errors": bench.errors,
        # the hot-path issue's targets (this 2-core machine); trending_ratio from issue 8
        "targets": {
            "events_per_s": 20_000,
            "full_to_raw": 0.06,
            "backlog_users_per_s": 15_000,
            "p99_ms": 1000,
            "two_workers_to_one": 1.6,
            "trending_ratio": 0.7,
        },
    }
    base = bench.baseline
    if base is not None:
        brun = base.runs
        result["settings"]["baseline"] = str(base.repo)
        result["settings"]["latency_workers"] = (
            "one per version on its own copy of the events topic (phase_latency_versions)"
        )
        result["latency"]["worker"] = bench.candidate.latency_worker
        result["baseline"] = {
            "path": str(base.repo),
            "git": git_info(base.repo),
            "settings_module": base.settings_info.get("module"),
            "settings_extra": base.settings_info.get("extra"),
            "settings_not_passed": sorted(base.dropped),  # set here, unknown to that version
            "rates": rates_of(brun, tuple(COMPARED)),
            "ratios": {
                "rescore_off_to_full": per_round(brun, "rescore_off", brun, "full"),
                "trending_on_to_off": per_round(brun, "full", brun, "trending_off"),
            },
            "latency": latency_of(brun.get("latency", [])) | {"worker": base.latency_worker},
            "runs": {k: v for k, v in brun.items() if k != "latency"},
        }
        result["comparison"] = compare(bench)
    return result


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:,.{digits}f}"


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("raw aiokafka consumer", "events/s", result["rates"]["raw"]),
        ("one worker, full path", "events/s", result["rates"]["full"]),
        ("one worker, rescoring off", "events/s", result["rates"]["rescore_off"]),
        ("backlog rescoring (no events)", "users/s", result["rates"]["backlog"]),
        ("one worker, trending off", "events/s", result["rates"]["trending_off"]),
        ("two workers together (steady)", "events/s", result["rates"]["two_workers"]),
    ]
    r = result["ratios"]
    ratio_rows = [
        ("full path / raw", r["full_to_raw"]),
        ("rescoring off / full path", r["rescore_off_to_full"]),
        ("trending on / off", r["trending_on_to_off"]),
        ("two workers / one", r["two_workers_to_one"]),
    ]
    print()
    if "comparison" in result:
        print(f"candidate (this checkout, {result['git']['commit'][:7]})")
    print(f"{'phase':34} {'unit':9} {'min':>10} {'median':>10} {'max':>10}  runs")
    for name, unit, s in rows:
        print(
            f"{name:34} {unit:9} {fmt(s['min']):>10} {fmt(s['median']):>10} "
            f"{fmt(s['max']):>10}  {len(s['runs'])}"
        )
    print(f"{'ratio (per round)':44} {'min':>10} {'median':>10} {'max':>10}")
    for name, s in ratio_rows:
        print(f"{name:44} {fmt(s['min'], 2):>10} {fmt(s['median'], 2):>10} {fmt(s['max'], 2):>10}")
    lat = result["latency"]
    if lat["windows"]:
        w0 = lat["windows"][0]
        print(
            f"latency at {fmt(w0['rate_events_per_s'])} events/s, {w0['users']} live users, "
            f"{lat['messages']} messages in {len(lat['windows'])} windows (ms):"
        )
        for q in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
            s = lat[q]
            print(
                f"  {q[:-3]:4} per message: min {fmt(s['min'])} median {fmt(s['median'])} "
                f"max {fmt(s['max'])}; pooled {fmt(lat['pooled'][q])}"
            )
        for w in lat["windows"]:
            h = w["worker_histogram"]
            print(
                f"  window {w['window'] + 1}: worker histogram (s) p50 {fmt(h.get('p50_s'), 3)} "
                f"p95 {fmt(h.get('p95_s'), 3)} p99 {fmt(h.get('p99_s'), 3)} over {h['count']} "
                "observations"
            )
    if "comparison" in result:
        print_comparison(result)
    st = result["stages"]
    if st:
        pe, pu = st["us_per_event"], st["us_per_user"]
        print(
            "stages, us/event: "
            + ", ".join(f"{k} {v:.2f}" for k, v in pe.items())
            + f" = {st['apply_total_us_per_event']:.2f} "
            f"(one core: {st['one_core_ceiling_events_per_s']:,.0f} events/s)"
        )
        print(
            "stages, us/user (batches of 256, no model): "
            + ", ".join(f"{k} {v:.1f}" for k, v in pu.items())
            + f" = {st['rank_total_us_per_user']:.1f} "
            f"(one core: {st['one_core_ceiling_users_per_s']:,.0f} users/s); "
            f"equal to recommend_batch: {st['staged_ranking_equals_recommend_batch']}"
        )
    for err in result["errors"]:
        print(f"ERROR {err}")


def print_comparison(result: dict[str, Any]) -> None:
    """--baseline: both versions side by side (medians of their runs, min-max below them in
    the JSON), and the spread of the per-round ratios candidate/baseline."""
    cmp, base = result["comparison"], result["baseline"]
    print()
    print(
        f"candidate vs baseline {base['path']} ({base['git']['commit'][:7]}): medians of the "
        "runs; ratio = candidate/baseline within a round (latency: a window)"
    )
    print(
        f"{'phase':34} {'unit':9} {'candidate':>10} {'baseline':>10}  "
        f"{'ratio min':>9} {'median':>7} {'max':>7}  pairs"
    )
    rows = [(title, phase) for phase, (_k, _u, title) in COMPARED.items()]
    rows += [(f"latency {q} per message", f"latency_{q}_ms") for q in ("p50", "p95", "p99", "max")]
    for title, key in rows:
        c = cmp[key]
        digits = 0 if c["unit"] != "ms" else 1
        print(
            f"{title:34} {c['unit']:9} {fmt(c['candidate']['median'], digits):>10} "
            f"{fmt(c['baseline']['median'], digits):>10}  {fmt(c['ratio']['min'], 2):>9} "
            f"{fmt(c['ratio']['median'], 2):>7} {fmt(c['ratio']['max'], 2):>7}  "
            f"{len(c['ratio']['runs'])}"
        )
    rate = {
        "candidate": result["latency"].get("worker", {}).get("rate_events_per_s"),
        "baseline": base["latency"].get("worker", {}).get("rate_events_per_s"),
    }
    if any(rate.values()):
        print(
            f"latency: live events at {fmt(rate['candidate'])} events/s (candidate), "
            f"{fmt(rate['baseline'])} events/s (baseline); worker histograms (s) per window:"
        )
        for label, lat in (("candidate", result["latency"]), ("baseline", base["latency"])):
            for w in lat["windows"]:
                h = w["worker_histogram"]
                print(
                    f"  {label:9} window {w['window'] + 1}: p50 {fmt(h.get('p50_s'), 3)} "
                    f"p95 {fmt(h.get('p95_s'), 3)} p99 {fmt(h.get('p99_s'), 3)} over "
                    f"{h['count']} observations, {w['messages']} messages"
                )
    if base["settings_not_passed"]:
        print("settings not passed to the baseline: " + ", ".join(base["settings_not_passed"]))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (and latency windows)")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--skip", nargs="*", choices=PHASES, default=[], help="phases to skip")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument(
        "--latency-users",
        type=int,
        help="distinct live users in the latency phase (default: --users)",
    )
    ap.add_argument("--stage-repeats", type=int, default=5)
    ap.add_argument("--flush-fetches", type=int, default=5, help="stages: fetches per flush")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pipeline.json")
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="PATH",
        help="another checkout of the project: its workers also run trending_off, "
        "rescore_off, backlog, full (each round, beside the candidate's) and latency",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="INTEREST_X=VALUE",
        help="a worker setting for this run (repeatable), e.g. INTEREST_RANKING=thread; "
        "recorded in the JSON's settings.worker_env",
    )
    args = ap.parse_args()
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("INTEREST_"):
            ap.error(f"--set {item!r}: expected INTEREST_NAME=VALUE")
        BENCH_ENV[key] = value
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "stream" / "cli.py").is_file():
            ap.error(f"--baseline {args.baseline}: no stream/cli.py there")
        if args.baseline == REPO:
            ap.error("--baseline: that is this checkout")
        args.baseline_settings = checkout_settings(args.baseline)  # before any broker starts
    # SIGTERM (and SIGINT where a background start ignores it) stop the run through the
    # finally below: workers and the broker this script started are stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    info = None
    kafka_phases = set(PHASES) - {"stages"} - set(args.skip)
    stages: dict[str, Any] | None = None
    if args.bootstrap or not kafka_phases:
        bootstrap = args.bootstrap or ""
    else:
        info = broker.start(
            port=broker.free_port(),
            data_dir=tmp / "kafka",
            log=lambda _m: None,
            overrides=BROKER_OVERRIDES,
        )
        bootstrap = info.bootstrap
        print(f"broker at {bootstrap} (data in {tmp / 'kafka'})")
    bench = Bench(args, bootstrap, tmp)
    start_ms = int(time.time() * 1000) - 3_600_000
    events = generate(args.users, args.events, seed=5, start_ms=start_ms)
    bench.events, bench.total = events, len(events)
    horizon = int(time.time() * 1000) + 86_400_000 - 600_000  # the worker's future limit
    bench.n_users = len({e["user_id"] for e in events if e["ts"] < horizon})
    try:
        if kafka_phases:
            bench.make_events_topic(bench.stack.events)
            t0 = time.perf_counter()
            produce(bootstrap, bench.stack.events, records(events))
            print(
                f"produced {len(events)} events of {bench.n_users} users in "
                f"{time.perf_counter() - t0:.1f} s to {bench.stack.events}"
            )
            for rnd in range(args.repeat):
                bench.run_round(rnd, last=rnd == args.repeat - 1)
            if bench.baseline is not None:
                if "latency" not in bench.skip:
                    bench.phase_latency_versions()
            elif bench.keep is not None:
                full = [r["events_per_s"] for r in bench.runs["full"]]
                rate = 0.5 * statistics.median(full)
                print(f"latency: live events at {rate:,.0f} events/s")
                try:
                    bench.phase_latency(rate)
                except BenchError as exc:
                    bench.errors.append(f"latency: {exc}")
                    print(f"  FAILED latency: {exc}")
            elif "latency" not in bench.skip:
                bench.errors.append("latency: needs the full phase (skipped or failed)")
        bench.stop_all()
        if "stages" not in bench.skip:
            print("stages (offline)")
            stages = run_stages(args, start_ms, bench.errors)
    finally:
        bench.stop_all()
        if info is not None:
            broker.down(data_dir=tmp / "kafka")
        shutil.rmtree(tmp, ignore_errors=True)
    result = summarise(bench, stages, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    print(f"written to {args.out}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
