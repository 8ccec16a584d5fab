"""`interest tail` and `interest inspect`: the subscriber's and the operator's view."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

import orjson
from rich.cells import cell_len, set_cell_size

from stream.config import Settings
from stream.core.errors import Unreachable
from stream.worker.kafka_clients import check_reachable, confluent_config

#: Interest strengths below this are left out of the summary (decayed to nothing).
STRENGTH_FLOOR = 1e-6
#: Categories shown per horizon, and items, in one line.
SHOWN_INTERESTS = 3
SHOWN_ITEMS = 5

COLUMNS = (
    "time",
    "user",
    "version",
    "events",
    "model",
    "short interests",
    "long interests",
    "top items",
)
#: Fixed widths of every column but the last (which takes what it needs), so lines align
#: whatever the values; a longer value is cut with an ellipsis.
WIDTHS = (8, 16, 7, 6, 10, 26, 26)
RIGHT_ALIGNED = frozenset({"version", "events"})


def interests_summary(entries: Sequence[dict[str, Any]], limit: int = SHOWN_INTERESTS) -> str:
    """``c12:3.25, c7:0.5``: the strongest categories at or above STRENGTH_FLOOR."""
    shown = [e for e in entries if float(e.get("strength", 0.0)) >= STRENGTH_FLOOR][:limit]
    return ", ".join(f"{e['category']}:{float(e['strength']):.3g}" for e in shown) or "-"


def clock_time(epoch_ms: Any) -> str:
    """Epoch milliseconds -> local ``HH:MM:SS`` ("-" when absent or not a number)."""
    if not isinstance(epoch_ms, int | float) or isinstance(epoch_ms, bool):
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000).strftime("%H:%M:%S")


def summary_row(msg: dict[str, Any]) -> tuple[str, ...]:
    """One message as the cells of COLUMNS."""
    items = ", ".join(
        f"{i['item_id']}({i['score']:.2f}{'/' + i['reason'] if i.get('reason') else ''})"
        for i in msg.get("items", [])[:SHOWN_ITEMS]
    )
    interests = msg.get("interests") or {}
    model = msg.get("model_version")
    return (
        clock_time(msg.get("generated_at")),
        str(msg["user_id"]),
        str(msg["version"]),
        str(msg.get("events_applied", "-")),
        "-" if model is None else str(model),
        interests_summary(interests.get("short", [])),
        interests_summary(interests.get("long", [])),
        items or "-",
    )


def _fit(text: str, width: int, right: bool = False) -> str:
    """Exactly ``width`` terminal cells (wide characters count two): one line, cut with an
    ellipsis, padded."""
    text = " ".join(text.split())  # newlines or tabs in an id would break the line
    if cell_len(text) > width:
        text = set_cell_size(text, width - 1) + "\u2026"
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


def format_line(cells: Sequence[str]) -> str:
    """The cells as one line of fixed-width columns (the last one as wide as it is)."""
    parts = [
        _fit(cell, width, COLUMNS[i] in RIGHT_ALIGNED)
        for i, (cell, width) in enumerate(zip(cells, WIDTHS, strict=False))
    ]
    last = " ".join(" ".join(cells[len(WIDTHS) :]).split())
    return " ".join([*parts, last]).rstrip()


class TablePrinter:
    """Prints messages as aligned lines under one header; bold header only on a terminal."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.color = self.stream.isatty() if color is None else color
        self.header_done = False

    def write(self, msg: dict[str, Any]) -> None:
        if not self.header_done:
            header = format_line(COLUMNS)
            self.stream.write(f"\x1b[1m{header}\x1b[0m\n" if self.color else f"{header}\n")
            self.header_done = True
        self.stream.write(format_line(summary_row(msg)) + "\n")
        self.stream.flush()


def tail_recommendations(
    settings: Settings,
    *,
    from_beginning: bool = False,
    users: set[str] | None = None,
    json_lines: bool = False,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Print recommendation messages until interrupted, a count, an idle timeout or ``stop``.

    Raises Unreachable (one line naming the address) when no broker answers within
    INTEREST_KAFKA_CONNECT_TIMEOUT_S. Consumer errors go to stderr, each distinct one once.
    """
    from confluent_kafka import Consumer, KafkaError

    check_reachable(settings)
    printer = TablePrinter()
    last_error = ""
    consumer = Consumer(
        confluent_config(
            settings,
            **{
                "group.id": f"interest-tail-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([settings.topic_recommendations])
    seen = 0
    last = time.monotonic()
    try:
        while (max_messages is None or seen < max_messages) and not (stop and stop.is_set()):
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            if msg.error():
                error = str(msg.error())
                if msg.error().code() != KafkaError._PARTITION_EOF and error != last_error:
                    print(f"warning: {error}", file=sys.stderr, flush=True)
                    last_error = error
                continue
            last = time.monotonic()
            if msg.value() is None:
                continue
            body = orjson.loads(msg.value())
            if users and body.get("user_id") not in users:
                continue
            seen += 1
            if on_message is not None:
                on_message(body)
            elif json_lines:
                print(msg.value().decode(), flush=True)
            else:
                printer.write(body)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return seen


def fetch_json(url: str, timeout_s: float = 10.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise Unreachable(f"{url}: HTTP {exc.code}: {body}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise Unreachable(
            f"{url}: no worker answers ({exc}); is `interest worker` running?"
        ) from None


def inspect_user(
    settings: Settings, user_id: str, *, base_url: str | None = None, vectors: bool = False
) -> str:
    """The user's state and last recommendations, pretty-printed JSON (ids as they are)."""
    base = (base_url or f"http://{settings.web_host}:{settings.web_port}").rstrip("/")
    from urllib.parse import quote

    uid = quote(user_id, safe="")
    state = fetch_json(f"{base}/users/{uid}/interest" + ("?vectors=1" if vectors else ""))
    try:
        recs = fetch_json(f"{base}/users/{uid}/recommendations")
    except RuntimeError as exc:
        recs = {"error": str(exc)}
    return json.dumps({"interest": state, "recommendations": recs}, indent=2, ensure_ascii=False)
