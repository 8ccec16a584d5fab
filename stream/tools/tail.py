"""`interest tail` and `interest inspect`: the subscriber's and the operator's view."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from stream.config import Settings
from stream.core.errors import Unreachable
from stream.worker.kafka_clients import confluent_config


def summary_row(msg: dict[str, Any]) -> tuple[str, ...]:
    items = ", ".join(
        f"{i['item_id']}({i['score']:.2f}{'/' + i['reason'] if i.get('reason') else ''})"
        for i in msg.get("items", [])[:5]
    )
    long = ", ".join(f"{c['category']}:{c['strength']:.2f}" for c in msg["interests"]["long"][:3])
    short = ", ".join(f"{c['category']}:{c['strength']:.2f}" for c in msg["interests"]["short"][:3])
    return (
        str(msg["user_id"]),
        str(msg["version"]),
        str(msg["events_applied"]),
        short,
        long,
        items or "-",
        str(msg.get("model_version")),
    )


COLUMNS = ("user", "version", "events", "short interests", "long interests", "top items", "model")


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
    """Print recommendation messages until interrupted, a count, an idle timeout or ``stop``."""
    from confluent_kafka import Consumer, KafkaError

    console = Console()
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
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    console.print(f"[red]{msg.error()}[/]")
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
                table = Table(*COLUMNS, show_header=seen == 1, box=None, pad_edge=False)
                table.add_row(*summary_row(body))
                console.print(table)
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
    """The user's state and last recommendations, pretty-printed JSON."""
    base = base_url or f"http://{settings.web_host}:{settings.web_port}"
    from urllib.parse import quote

    uid = quote(user_id, safe="")
    state = fetch_json(f"{base}/users/{uid}/interest" + ("?vectors=1" if vectors else ""))
    try:
        recs = fetch_json(f"{base}/users/{uid}/recommendations")
    except RuntimeError as exc:
        recs = {"error": str(exc)}
    return json.dumps({"interest": state, "recommendations": recs}, indent=2)
