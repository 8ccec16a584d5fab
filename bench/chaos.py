"""Exactness under faults: real broker, real `interest worker` processes, the contract formula.

    python bench/chaos.py [--trials 20] [--bootstrap HOST:PORT] [--quick]
                          [--scenarios kill9 broker scale replay] [--users N] [--seed S]

Not part of CI (minutes, not seconds). Needs the 114-user Taobao sample at
../shared/data/taobao_userbehavior_114users/UserBehavior.csv (beside the checkout); without
it the script says so and exits 0 having run nothing.

Every trial runs on its own topics and consumer group (a fresh tests.support.harness.Stack),
sends the sample's records (in event-time order, keyed by user) at a steady rate while the
fault happens, waits until every user's latest recommendation carries at least its distinct
events (bounded), lets the stream go quiet, and checks every user's latest message against
the independent formula in tests/support/harness.py (``expected_state`` /
``interest_mismatches``): events_applied equal to the distinct events, strengths within 1e-4.

Scenarios:

  kill9    --trials times: two workers, ``kill -9`` of one of them (chosen at random) at a
           random moment of the stream, restarted at once on its data directory
  broker   the broker is killed with ``kill -9`` mid-stream and restarted on the same data
           directory and port; the workers must recover by themselves (nobody restarts them)
           within --recover-s. Needs the broker this script starts (not with --bootstrap)
  scale    workers 2 -> 3 -> 1 while the stream runs: a third joins, then two stop (SIGTERM)
  replay   after every event is applied, the records of the last hour of event time
           (--replay-window-h) are sent again, byte for byte, at new offsets (an upstream
           replay); nothing may count twice

Per scenario: trials, exact k/N, events lost (expected minus applied, summed over users where
positive: events not applied within the bound), events doubled (applied minus expected where
positive), time. Besides each user's latest message, EVERY message is checked against the
formula over the events it claims (``events_applied`` n: the first records of that user, in
send order, holding n distinct events; one user's records are applied in offset order), and
the messages that differ are counted ("messages off the formula"; not part of "exact"; the
replay scenario checks the messages before its replay only). A summary table on stdout,
every trial's details (kill moments, problems, worker exits and log tails) in
bench/results/chaos.json. The script reports what happens; it
never retries a trial to make it pass. Exit status 1 when any trial is not exact.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.runinfo import git_info  # noqa: E402
from stream.tools import broker  # noqa: E402
from tests.support.harness import (  # noqa: E402
    Collector,
    RawEvent,
    Stack,
    WorkerProc,
    expected_state,
    interest_mismatches,
    metric_value,
    read_taobao,
    taobao_records,
)
from tests.support.helpers import poll_until  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "taobao_userbehavior_114users" / "UserBehavior.csv"
SCENARIOS = ("kill9", "broker", "scale", "replay")
RUNNING_MARKER = "worker.running"  # stream.worker.main.RUNNING_MARKER
QUIET_S = 3.0  # no new recommendation for this long: the stream has gone quiet


# librdkafka's lines (a broker outage makes the collector and producers log every 50 ms)
# go to this logger, which keeps them out of the summary; --verbose shows them
CLIENT_LOG = logging.getLogger("chaos.clients")
CLIENT_LOG.addHandler(logging.NullHandler())
CLIENT_LOG.propagate = False


class ChaosError(Exception):
    """A step of a trial could not be done (a worker never became ready, ...)."""


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str | Callable[[], str],
    interval_s: float = 0.1,
) -> Any:
    """Poll until truthy, bounded; a timeout is a ChaosError."""
    return poll_until(
        predicate, timeout_s, what, interval_s, error=ChaosError, reraise=(ChaosError,)
    )


def wait_ready(worker: WorkerProc, timeout_s: float = 120) -> float:
    """Until the worker serves HTTP and owns a partition; seconds waited."""
    t0 = time.monotonic()

    def ready() -> bool:
        if worker.proc is None or worker.proc.poll() is not None:
            raise ChaosError(f"worker {worker.name} exited:\n{worker.log_tail(20)}")
        body = worker.health()
        return bool(body and body["active_partitions"] and not body["in_recovery"])

    wait_until(ready, timeout_s, lambda: f"worker {worker.name} not ready:\n{worker.log_tail(20)}")
    return time.monotonic() - t0


class Sender:
    """Sends (key, value) records at a steady rate in a thread, with delivery reports.

    Like tests.support.harness.produce, but it waits up to ``flush_s`` for deliveries (a
    broker restart takes longer than produce's 30 s flush) and says how many were delivered.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        records: Sequence[tuple[bytes, bytes]],
        rate: float | None,
        flush_s: float = 180,
    ) -> None:
        self.bootstrap, self.topic, self.records = bootstrap, topic, records
        self.rate, self.flush_s = rate, flush_s
        self.sent = self.delivered = 0
        self.errors: list[str] = []
        self.started = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sender:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def _run(self) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "partitioner": "murmur2_random",
                "linger.ms": 5,
                "enable.idempotence": True,
                "logger": CLIENT_LOG,
            }
        )

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is None:
                self.delivered += 1
            else:
                self.errors.append(str(err))

        for n, (key, value) in enumerate(self.records):
            if self.rate:
                delay = self.started + n / self.rate - time.monotonic()
                if delay > 0.002:
                    time.sleep(delay)
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            self.sent = n + 1
        deadline = time.monotonic() + self.flush_s
        while producer.flush(1.0) and time.monotonic() < deadline:
            pass

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise ChaosError(f"the producer did not finish in {timeout_s:g} s ({self.summary()})")
        if self.delivered != len(self.records):
            raise ChaosError(f"not every record was delivered: {self.summary()}")

    def summary(self) -> str:
        errors = f", errors {self.errors[:3]}" if self.errors else ""
        return f"sent {self.sent}, delivered {self.delivered} of {len(self.records)}{errors}"


# --------------------------------------------------------------------------- checks


class PrefixFormula:
    """The formula over the first events of a user, in the order they were sent.

    One user's records sit on one partition in send order and the worker applies them in
    offset order, so a message claiming ``events_applied == n`` must carry the strengths of
    the shortest prefix of that user's records holding n distinct events. This checks every
    message, not only each user's latest (which is what "exact" is about)."""

    def __init__(self, ordered: Sequence[RawEvent]) -> None:
        self.per_user: dict[str, list[RawEvent]] = {}
        for e in ordered:
            self.per_user.setdefault(e.user_id, []).append(e)
        self.cache: dict[tuple[str, int], dict[str, Any] | None] = {}

    def expected(self, user: str, n: int) -> dict[str, Any] | None:
        key = (user, n)
        if key not in self.cache:
            seen: set[tuple[str, str, int]] = set()
            prefix: list[RawEvent] = []
            for e in self.per_user.get(user, []):
                if len(seen) == n:
                    break
                prefix.append(e)
                seen.add((e.item_id, e.behavior, e.ts_ms))
            self.cache[key] = expected_state(prefix)[user] if prefix and len(seen) == n else None
        return self.cache[key]

    def check(self, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
        bad: list[str] = []
        for msg in messages:
            user, n = msg.get("user_id"), msg.get("events_applied")
            if user is None or n is None:
                continue
            exp = self.expected(user, int(n))
            if exp is None:
                bad.append(f"{user} v{msg.get('version')}: {n} events applied, more than sent")
                continue
            problems = interest_mismatches({user: exp}, {user: msg})
            if problems:
                bad.append(f"v{msg.get('version')} " + "; ".join(problems[:2]))
        return {
            "messages_checked": len(messages),
            "messages_inconsistent": len(bad),
            "first_inconsistent": bad[:5],
        }


def tally(expected: dict[str, dict[str, Any]], latest: dict[str, dict[str, Any]]) -> dict:
    lost = doubled = missing = 0
    for user, exp in expected.items():
        msg = latest.get(user)
        got = 0 if msg is None else int(msg["events_applied"])
        missing += msg is None
        lost += max(0, exp["events"] - got)
        doubled += max(0, got - exp["events"])
    return {"lost": lost, "doubled": doubled, "users_without_message": missing}


def settle_and_check(
    expected: dict[str, dict[str, Any]],
    collector: Collector,
    timeout_s: float,
    stall_s: float = 60,
    prefix: PrefixFormula | None = None,
) -> dict[str, Any]:
    """Wait (bounded) until every user's latest message carries at least its distinct events
    and nothing new arrives for QUIET_S, then compare with the formula.

    Gives up early when no message arrives for ``stall_s`` with users still short (then the
    shortfall is reported as lost)."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    seen, last_change = -1, time.monotonic()
    complete_at: float | None = None
    ended = "quiet"
    while True:
        with collector.lock:
            n = len(collector.messages)
            complete = all(
                collector.latest.get(u, {}).get("events_applied", 0) >= e["events"]
                for u, e in expected.items()
            )
        now = time.monotonic()
        if n != seen:
            seen, last_change = n, now
        if complete and complete_at is None:
            complete_at = now
        if complete and now - last_change >= QUIET_S:
            break
        if not complete and now - last_change >= stall_s:
            ended = f"stalled: no new message for {stall_s:g} s with users short of events"
            break
        if now >= deadline:
            ended = f"timed out after {timeout_s:g} s"
            break
        time.sleep(0.2)
    with collector.lock:
        latest = {u: dict(m) for u, m in collector.latest.items()}
        every = list(collector.messages)
        messages = len(every)
    problems = interest_mismatches(expected, latest)
    every_message = prefix.check(every) if prefix is not None else {}
    return {
        **every_message,
        "exact": not problems,
        **tally(expected, latest),
        "problems": len(problems),
        "first_problems": problems[:8],
        "settle_s": round(time.monotonic() - t0, 1),
        "complete_after_s": None if complete_at is None else round(complete_at - t0, 1),
        "ended": ended,
        "messages": messages,
    }


def worker_report(workers: Sequence[WorkerProc]) -> list[dict[str, Any]]:
    out = []
    for w in workers:
        code = None if w.proc is None else w.proc.poll()
        entry: dict[str, Any] = {"name": w.name, "exit_code": code, "log": str(w.log_path)}
        text = w.metrics() if code is None else ""
        if text:
            entry["counters"] = {
                n: metric_value(text, "interest_" + n)
                for n in (
                    "events_total",
                    "events_duplicate_total",
                    "events_rejected_total",
                    "recommendations_published_total",
                    "scorer_errors_total",
                )
            }
        out.append(entry)
    return out


def log_excerpt(workers: Sequence[WorkerProc], n: int = 12) -> dict[str, list[str]]:
    """The warning/error lines of each worker's log (the last ``n``)."""
    out: dict[str, list[str]] = {}
    for w in workers:
        try:
            lines = w.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        bad = [
            line
            for line in lines
            if any(k in line for k in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
        ]
        if bad:
            out[w.name] = bad[-n:]
    return out


# --------------------------------------------------------------------------- scenarios


class Chaos:
    def __init__(
        self,
        args: argparse.Namespace,
        bootstrap: str,
        tmp: Path,
        broker_dir: Path | None,
        broker_port: int | None,
        events: list[RawEvent],
    ) -> None:
        self.args = args
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.broker_dir = broker_dir
        self.broker_port = broker_port
        self.events = events
        self.expected = expected_state(events)
        ordered = sorted(events, key=lambda e: e.ts_ms)  # a live stream's order
        self.ordered = ordered
        self.records = taobao_records(ordered)
        self.prefix = PrefixFormula(ordered)
        self.rng = random.Random(args.seed)
        self.live: list[WorkerProc] = []

    def rate(self, seconds: float) -> float:
        return max(50.0, len(self.records) / seconds)

    def trial_env(self, name: str) -> tuple[Stack, Path]:
        suffix = f"{name}-{uuid.uuid4().hex[:8]}"
        root = self.tmp / suffix
        root.mkdir(parents=True)
        return Stack(bootstrap=self.bootstrap, suffix=suffix), root

    def start(self, stack: Stack, data_dir: Path, name: str) -> WorkerProc:
        worker = WorkerProc(stack, data_dir, name).start()
        self.live.append(worker)
        return worker

    def stop_all(self) -> None:
        for w in self.live:
            w.stop(timeout_s=30)
        self.live.clear()

    def finish(self, result: dict[str, Any], workers: Sequence[WorkerProc], root: Path) -> None:
        result["seconds"] = round(time.monotonic() - result.pop("started"), 1)
        result["workers"] = worker_report(workers)
        logs = log_excerpt(workers)
        if logs:
            result["log_warnings"] = logs
        for w in workers:
            w.stop(timeout_s=60)
        self.live = [w for w in self.live if w not in workers]
        if not self.args.keep_logs:
            shutil.rmtree(root, ignore_errors=True)

    # ------------------------------------------------------------------ kill -9 of a worker

    def kill9_trial(self, trial: int) -> dict[str, Any]:
        stack, root = self.trial_env(f"kill{trial}")
        duration = self.args.duration
        result: dict[str, Any] = {"started": time.monotonic(), "trial": trial, "stream_s": duration}
        workers = [self.start(stack, root / f"w{n}", f"w{n}") for n in (1, 2)]
        collector = Collector(self.bootstrap, stack.recommendations, {"logger": CLIENT_LOG})
        try:
            for w in workers:
                wait_ready(w)
            sender = Sender(self.bootstrap, stack.events, self.records, self.rate(duration))
            kill_at = self.rng.uniform(0.1, 0.9) * duration
            victim = self.rng.choice(workers)
            sender.start()
            time.sleep(max(0.0, sender.started + kill_at - time.monotonic()))  # the chosen moment
            result.update(
                victim=victim.name, kill_at_s=round(kill_at, 2), records_sent_at_kill=sender.sent
            )
            victim.kill9()
            restarted = self.start(stack, victim.data_dir, f"{victim.name}-restarted")
            workers.append(restarted)
            sender.join(duration + 240)
            result["restart_ready_s"] = round(wait_ready(restarted, 180), 1)
            result.update(
                settle_and_check(self.expected, collector, self.args.settle_s, prefix=self.prefix)
            )
        except ChaosError as exc:
            result.update(exact=False, error=str(exc), **tally(self.expected, collector.latest))
        finally:
            collector.close()
            self.finish(result, workers, root)
        return result

    # ------------------------------------------------------------------ kill -9 of the broker

    def broker_trial(self) -> dict[str, Any]:
        assert self.broker_dir is not None and self.broker_port is not None
        stack, root = self.trial_env("broker")
        duration = max(self.args.duration, 12.0)
        result: dict[str, Any] = {"started": time.monotonic(), "trial": 0, "stream_s": duration}
        workers = [self.start(stack, root / f"w{n}", f"w{n}") for n in (1, 2)]
        collector = Collector(self.bootstrap, stack.recommendations, {"logger": CLIENT_LOG})
        try:
            for w in workers:
                wait_ready(w)
            sender = Sender(self.bootstrap, stack.events, self.records, self.rate(duration))
            kill_at = self.rng.uniform(0.3, 0.6) * duration
            sender.start()
            time.sleep(max(0.0, sender.started + kill_at - time.monotonic()))
            info = broker.status(self.broker_dir)
            if info is None:
                raise ChaosError("the broker is not running before the kill")
            os.kill(info.pid, signal.SIGKILL)
            wait_until(lambda: broker.status(self.broker_dir) is None, 30, "broker still alive")
            result.update(kill_at_s=round(kill_at, 2), records_sent_at_kill=sender.sent)
            time.sleep(self.args.broker_down_s)  # the outage itself, not a synchronisation
            t0 = time.monotonic()
            broker.start(self.broker_port, self.broker_dir, timeout_s=180, log=lambda _m: None)
            result["broker_restart_s"] = round(time.monotonic() - t0, 1)
            t1 = time.monotonic()
            with collector.lock:
                published_before = len(collector.messages)

            def recovered() -> bool:
                """Every worker alive and serving, and recommendations flowing again (a
                worker's /health answers from memory even while the broker is away)."""
                for w in workers:
                    if w.proc is None or w.proc.poll() is not None:
                        raise ChaosError(
                            f"worker {w.name} exited ({w.proc.returncode if w.proc else None}) "
                            f"after the broker restart:\n{w.log_tail(25)}"
                        )
                healths = [w.health() for w in workers]
                with collector.lock:
                    flowing = len(collector.messages) > published_before
                return flowing and all(
                    h and h["active_partitions"] and not h["in_recovery"] for h in healths
                )

            wait_until(
                recovered,
                self.args.recover_s,
                lambda: (
                    "workers did not recover after the broker restart: "
                    + "; ".join(f"{w.name}: {w.health()}" for w in workers)
                ),
            )
            result["recommendations_again_after_s"] = round(time.monotonic() - t1, 1)
            sender.join(duration + 300)
            result["producer"] = sender.summary()
            result.update(
                settle_and_check(
                    self.expected, collector, self.args.settle_s + 120, prefix=self.prefix
                )
            )
        except ChaosError as exc:
            result.update(exact=False, error=str(exc), **tally(self.expected, collector.latest))
        finally:
            collector.close()
            if broker.status(self.broker_dir) is None:  # leave a broker for the next scenario
                try:
                    broker.start(
                        self.broker_port, self.broker_dir, timeout_s=180, log=lambda _m: None
                    )
                except broker.BrokerError as exc:
                    result["broker_restart_error"] = str(exc)
            self.finish(result, workers, root)
        return result

    # ------------------------------------------------------------------ 2 -> 3 -> 1 workers

    def scale_trial(self) -> dict[str, Any]:
        stack, root = self.trial_env("scale")
        duration = max(self.args.duration * 2, 30.0)
        result: dict[str, Any] = {"started": time.monotonic(), "trial": 0, "stream_s": duration}
        workers = [self.start(stack, root / f"w{n}", f"w{n}") for n in (1, 2)]
        collector = Collector(self.bootstrap, stack.recommendations, {"logger": CLIENT_LOG})
        try:
            for w in workers:
                wait_ready(w)
            sender = Sender(self.bootstrap, stack.events, self.records, self.rate(duration))
            sender.start()
            time.sleep(duration / 4)
            w3 = self.start(stack, root / "w3", "w3")
            workers.append(w3)
            result["third_started_at_s"] = round(time.monotonic() - sender.started, 1)
            result["third_ready_s"] = round(wait_ready(w3, 180), 1)
            result["two_stopped_at_s"] = round(time.monotonic() - sender.started, 1)
            stoppers = [threading.Thread(target=w.stop, args=(90,)) for w in workers[:2]]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(120)
            result["stops_clean"] = {
                w.name: not (w.data_dir / RUNNING_MARKER).exists() for w in workers[:2]
            }
            result["stream_running_during_stop"] = sender.thread.is_alive()
            sender.join(duration + 240)
            result.update(
                settle_and_check(self.expected, collector, self.args.settle_s, prefix=self.prefix)
            )
        except ChaosError as exc:
            result.update(exact=False, error=str(exc), **tally(self.expected, collector.latest))
        finally:
            collector.close()
            self.finish(result, workers, root)
        return result

    # ------------------------------------------------------------------ upstream replay

    def replay_trial(self) -> dict[str, Any]:
        stack, root = self.trial_env("replay")
        result: dict[str, Any] = {"started": time.monotonic(), "trial": 0}
        workers = [self.start(stack, root / f"w{n}", f"w{n}") for n in (1, 2)]
        collector = Collector(self.bootstrap, stack.recommendations, {"logger": CLIENT_LOG})
        try:
            for w in workers:
                wait_ready(w)
            Sender(self.bootstrap, stack.events, self.records, None).start().join(240)
            before = settle_and_check(
                self.expected, collector, self.args.settle_s, prefix=self.prefix
            )
            result["before_replay"] = {
                k: before[k] for k in ("exact", "lost", "doubled", "messages_inconsistent")
            }
            for key in ("messages_checked", "messages_inconsistent", "first_inconsistent"):
                result[key] = before[key]  # every message up to the replay (doubles after it)
            newest = max(e.ts_ms for e in self.ordered)
            again = [
                r
                for r, e in zip(self.records, self.ordered, strict=True)
                if e.ts_ms >= newest - self.args.replay_window_h * 3_600_000
            ]
            result["replay_window_h"] = self.args.replay_window_h
            result["replayed_records"] = len(again)
            per_user: dict[bytes, int] = {}
            for key, _ in again:
                per_user[key] = per_user.get(key, 0) + 1
            result["replayed_users"] = len(per_user)
            result["replayed_max_per_user"] = max(per_user.values(), default=0)
            handled_before = self._handled(workers)
            Sender(self.bootstrap, stack.events, again, None).start().join(120)
            target = handled_before + len(again)
            try:  # every replayed record reached a worker (applied or skipped)
                wait_until(
                    lambda: self._handled(workers) >= target,
                    120,
                    lambda: (
                        f"workers handled {self._handled(workers):g} of {target:g} "
                        "records after the replay"
                    ),
                )
            except ChaosError as exc:
                result["replay_not_handled"] = str(exc)
            counters = [
                metric_value(w.metrics(), "interest_events_duplicate_total") for w in workers
            ]
            result["duplicates_skipped_by_workers"] = sum(counters)
            after = settle_and_check(self.expected, collector, self.args.settle_s)
            after.pop("messages", None)
            result.update(after)
        except ChaosError as exc:
            result.update(exact=False, error=str(exc), **tally(self.expected, collector.latest))
        finally:
            collector.close()
            self.finish(result, workers, root)
        return result

    @staticmethod
    def _handled(workers: Sequence[WorkerProc]) -> float:
        total = 0.0
        for w in workers:
            text = w.metrics()
            if not text:
                raise ChaosError(f"worker {w.name} does not answer /metrics")
            for name in ("events_total", "events_duplicate_total", "events_rejected_total"):
                total += metric_value(text, "interest_" + name)
        return total


# --------------------------------------------------------------------------- main


def summarise(name: str, trials: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    return {
        "scenario": name,
        "trials": len(trials),
        "exact": sum(bool(t.get("exact")) for t in trials),
        "events_lost": sum(int(t.get("lost", 0)) for t in trials),
        "events_doubled": sum(int(t.get("doubled", 0)) for t in trials),
        "messages_inconsistent": sum(int(t.get("messages_inconsistent", 0)) for t in trials),
        "messages_checked": sum(int(t.get("messages_checked", 0)) for t in trials),
        "seconds": round(seconds, 1),
        "details": trials,
    }


def print_table(summary: list[dict[str, Any]], skipped: dict[str, str]) -> None:
    print()
    print(
        f"{'scenario':10} {'trials':>6} {'exact':>7} {'lost':>6} {'doubled':>8} {'time':>8}"
        "   messages off the formula (of checked)"
    )
    for s in summary:
        print(
            f"{s['scenario']:10} {s['trials']:>6} {s['exact']:>3}/{s['trials']:<3} "
            f"{s['events_lost']:>6} {s['events_doubled']:>8} {s['seconds']:>7.0f}s"
            f"   {s['messages_inconsistent']} of {s['messages_checked']}"
        )
        for t in s["details"]:
            if not t.get("exact"):
                why = t.get("error") or t.get("ended", "")
                first = "; ".join(t.get("first_problems", [])[:3])
                print(
                    f"  trial {t['trial']}: lost {t.get('lost')}, doubled {t.get('doubled')}, "
                    f"{t.get('problems', '?')} problems ({why}) {first}"[:400]
                )
    for name, why in skipped.items():
        print(f"{name:10} skipped: {why}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, help="kill -9 trials (default 20; --quick: 3)")
    ap.add_argument("--bootstrap", help="use this broker (the broker scenario is then skipped)")
    ap.add_argument("--quick", action="store_true", help="3 kill trials, 40 of the 114 users")
    ap.add_argument("--scenarios", nargs="*", choices=SCENARIOS, default=list(SCENARIOS))
    ap.add_argument("--users", type=int, help="use this many of the sample's users (default all)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds the stream lasts")
    ap.add_argument("--settle-s", type=float, default=240.0, help="bound on applying everything")
    ap.add_argument("--recover-s", type=float, default=120.0, help="bound on broker recovery")
    ap.add_argument("--broker-down-s", type=float, default=3.0, help="length of the outage")
    ap.add_argument(
        "--replay-window-h",
        type=float,
        default=1.0,
        help="replay: re-send the records of the last this many hours of event time",
    )
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    ap.add_argument("--keep-logs", action="store_true", help="keep worker logs and data dirs")
    ap.add_argument("--verbose", action="store_true", help="show librdkafka's client lines")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos.json")
    args = ap.parse_args()
    trials = args.trials if args.trials is not None else (3 if args.quick else 20)
    users_wanted = args.users or (40 if args.quick else None)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (the 114-user Taobao sample, beside the checkout)")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.verbose:
        CLIENT_LOG.propagate = True
        logging.basicConfig(level=logging.INFO)
    events = read_taobao(DATA)
    if users_wanted:
        users = sorted({e.user_id for e in events})
        chosen = set(random.Random(1).sample(users, min(users_wanted, len(users))))
        events = [e for e in events if e.user_id in chosen]
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    broker_dir = port = None
    skipped: dict[str, str] = {}
    if args.bootstrap:
        bootstrap = args.bootstrap
        if "broker" in args.scenarios:
            skipped["broker"] = "needs a broker this script starts (run without --bootstrap)"
    else:
        broker_dir, port = tmp / "kafka", broker.free_port()
        info = broker.start(port, broker_dir, timeout_s=180, log=lambda _m: None)
        bootstrap = info.bootstrap
    print(
        f"chaos: {len(events)} events of {len({e.user_id for e in events})} users, "
        f"broker {bootstrap}, seed {args.seed}, {trials} kill trials"
    )
    chaos = Chaos(args, bootstrap, tmp, broker_dir, port, events)
    summary: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        plan: list[tuple[str, int, Callable[[int], dict[str, Any]]]] = [
            ("kill9", trials, chaos.kill9_trial),
            ("broker", 1, lambda _i: chaos.broker_trial()),
            ("scale", 1, lambda _i: chaos.scale_trial()),
            ("replay", 1, lambda _i: chaos.replay_trial()),
        ]
        for name, count, run in plan:
            if name not in args.scenarios or name in skipped:
                continue
            t0 = time.monotonic()
            print(f"{name} ...", flush=True)
            results: list[dict[str, Any]] = []
            for i in range(count):
                try:
                    t = run(i)
                except Exception:
                    t = {"trial": i, "exact": False, "error": traceback.format_exc(limit=5)}
                results.append(t)
                print(
                    f"  {name} trial {t['trial']}: exact {t.get('exact')}, lost {t.get('lost')}, "
                    f"doubled {t.get('doubled')}, {t.get('seconds')} s"
                    + (f", victim {t['victim']} at {t['kill_at_s']} s" if "victim" in t else "")
                    + (f", error: {t['error'].splitlines()[0]}" if t.get("error") else ""),
                    flush=True,
                )
            summary.append(summarise(name, results, time.monotonic() - t0))
    finally:
        chaos.stop_all()
        if broker_dir is not None:
            broker.down(broker_dir)
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_info(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "settings": {
            "quick": args.quick,
            "kill_trials": trials,
            "users": len({e.user_id for e in events}),
            "events": len(events),
            "distinct_events": sum(e["events"] for e in chaos.expected.values()),
            "stream_seconds": args.duration,
            "seed": args.seed,
            "replay_window_h": args.replay_window_h,
            "bootstrap_given": bool(args.bootstrap),
            "scenarios": args.scenarios,
            "worker_env": "tests.support.harness.Stack defaults (4 partitions, rescore 200 ms, "
            "4096 categories/items so that the formula is exact)",
        },
        "total_seconds": round(time.monotonic() - started, 1),
        "scenarios": summary,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print_table(summary, skipped)
    print(f"written to {args.out}")
    return 0 if all(s["exact"] == s["trials"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
