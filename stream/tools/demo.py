"""`interest demo`: broker, training, worker, replay and live recommendations in one command.

It starts only what is missing (a reachable broker is reused) and stops everything it
started on exit or Ctrl-C. A broker address given explicitly (INTEREST_KAFKA_BOOTSTRAP, a
config file or a flag) means an existing broker: if it does not answer within
INTEREST_KAFKA_CONNECT_TIMEOUT_S the demo stops with one line. Only with the default address
(localhost:9092) does it start a local broker when none answers. The model trains in the
background while the stream already flows, so the demo also shows a worker picking up a
new model version without a restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from stream.config import Settings
from stream.core.errors import Unreachable
from stream.tools import broker
from stream.tools.producer import send_records
from stream.tools.synthetic import generate, write_jsonl
from stream.tools.tail import COLUMNS, fetch_json, summary_row, tail_recommendations
from stream.worker.kafka_clients import check_reachable

console = Console()


def broker_reachable(settings: Settings, timeout_s: float = 3.0) -> bool:
    """True when a broker answers at the configured address within ``timeout_s``."""
    try:
        check_reachable(settings, min(timeout_s, settings.kafka_connect_timeout_s))
    except Unreachable:
        return False
    return True


def start_process(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = log_path.open("ab")
    return subprocess.Popen(
        args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if fetch_json(url, timeout_s=2).get("active_partitions"):
                return True
        except RuntimeError:
            pass
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


class LiveView:
    """The newest message per user, newest users first."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.lock = threading.Lock()

    def add(self, msg: dict[str, Any]) -> None:
        with self.lock:
            self.messages += 1
            self.latest.pop(msg["user_id"], None)
            self.latest[msg["user_id"]] = msg

    def render(self, status: str) -> Table:
        table = Table(*COLUMNS, title=status, title_justify="left")
        with self.lock:
            for msg in list(self.latest.values())[-12:][::-1]:
                table.add_row(*summary_row(msg))
        return table


def run_demo(
    settings: Settings,
    *,
    users: int,
    events: int,
    rate: float,
    work_dir: Path,
    model_wait_s: float = 240.0,
) -> int:
    """Run the demo; return the exit code (0 when recommendations flowed)."""
    work_dir = work_dir.resolve()
    started_broker = False
    procs: list[subprocess.Popen[bytes]] = []
    stop_tail = threading.Event()
    if "kafka_bootstrap" in settings.model_fields_set:
        check_reachable(settings)  # an address the user gave: use it, or stop with one line
    elif not broker_reachable(settings):
        console.print(f"no Kafka at {settings.kafka_bootstrap}: starting a local broker")
        port = int(settings.kafka_bootstrap.split(",")[0].rpartition(":")[2])
        bootstrap = broker.up(port=port, data_dir=work_dir / "kafka", log=console.print)
        settings = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        started_broker = True
    model_dir = work_dir / "model"
    start_ms = int(time.time() * 1000) - 4 * 3_600_000
    records = generate(users, events * 2, seed=11, start_ms=start_ms)
    history, live = records[:events], records[events:]
    history_file = write_jsonl(history, work_dir / "history.jsonl")
    env = {
        **os.environ,
        "INTEREST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "INTEREST_DATA_DIR": str(work_dir / "state"),
        "INTEREST_MODEL_DIR": str(model_dir),
        "INTEREST_MODEL_POLL_INTERVAL_S": "2",
        "INTEREST_WEB_PORT": str(settings.web_port),
    }
    cli = [sys.executable, "-m", "stream.cli"]
    view = LiveView()
    health = f"http://{settings.web_host}:{settings.web_port}/health"
    try:
        if not any(p.name.isdigit() for p in model_dir.glob("*")):
            console.print("training a model on the synthetic history in the background ...")
            train = [*cli, "train", str(history_file), "--out", str(model_dir), "--epochs", "2"]
            procs.append(start_process(train, work_dir / "train.log", env))
        worker = start_process([*cli, "worker"], work_dir / "worker.log", env)
        procs.append(worker)
        if not wait_healthy(health, worker, 120):
            console.print(
                f"[red]the worker did not become healthy; see {work_dir / 'worker.log'}[/]"
            )
            return 1
        threading.Thread(
            target=tail_recommendations,
            kwargs={"settings": settings, "on_message": view.add, "stop": stop_tail},
            daemon=True,
        ).start()
        shift = int(time.time() * 1000) - live[0]["ts"]
        for record in live:
            record["ts"] += shift
        half = len(live) // 2
        with Live(view.render("starting"), console=console, refresh_per_second=2) as screen:
            replay(settings, live[:half], rate, view, screen, health, "before the model")
            wait_for_model(view, screen, health, model_wait_s)
            replay(settings, live[half:], rate, view, screen, health, "with the model")
        with_model = sum(1 for m in view.latest.values() if m.get("model_version"))
        console.print(
            f"[bold]{view.messages}[/] recommendation messages for {len(view.latest)} users "
            f"({with_model} users' latest from a model). Logs and state in {work_dir}."
        )
        return 0 if view.messages else 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        stop_tail.set()
        for proc in procs:
            stop(proc)
        if started_broker:
            broker.down(data_dir=work_dir / "kafka")


def status_line(view: LiveView, health: str, phase: str) -> str:
    try:
        model = fetch_json(health, timeout_s=2).get("model_version")
    except RuntimeError:
        model = "?"
    return (
        f"{view.messages} recommendations for {len(view.latest)} users; "
        f"model {model or 'training...'}; replaying {phase}"
    )


def replay(
    settings: Settings,
    records: list[dict[str, Any]],
    rate: float,
    view: LiveView,
    screen: Live,
    health: str,
    phase: str,
) -> None:
    """Send ``records`` at ``rate`` in a thread while the screen refreshes."""
    done: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: done.setdefault("report", send_records(settings, records, rate=rate)),
        daemon=True,
    )
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        screen.update(view.render(status_line(view, health, f"{len(records)} events {phase}")))
    linger = time.monotonic() + 3
    while time.monotonic() < linger:
        time.sleep(0.5)
        screen.update(view.render(status_line(view, health, f"done {phase}")))


def wait_for_model(view: LiveView, screen: Live, health: str, timeout_s: float) -> None:
    """Until the worker reports a model version (training runs in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if fetch_json(health, timeout_s=2).get("model_version"):
                return
        except RuntimeError:
            pass
        time.sleep(0.5)
        screen.update(view.render(status_line(view, health, "paused, waiting for the model")))
