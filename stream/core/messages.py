"""The records the worker writes for others: recommendation messages (CONTRACT section 3)
and dead-letter records (CONTRACT section 1).

Pure: the offline evaluation and the tests build messages with the very same functions as
the worker.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, Protocol

from stream.core.decay import LONG, SHORT
from stream.core.interest import UserState, top_categories
from stream.core.types import Recommended, Rejection

INTERESTS_PER_HORIZON = 10
DLQ_MAX_ORIGINAL_BYTES = 16 * 1024  # of a rejected value carried by its dead letter


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def interests(state: UserState) -> dict[str, list[dict[str, Any]]]:
    """Strongest categories per horizon at t_ref, as the message carries them."""
    return {
        name: [
            {"category": cat, "strength": float(value)}
            for cat, value in top_categories(state, horizon, INTERESTS_PER_HORIZON)
        ]
        for name, horizon in (("long", LONG), ("short", SHORT))
    }


def item_entry(rec: Recommended) -> dict[str, Any]:
    entry: dict[str, Any] = {"item_id": rec.item_id, "score": round(float(rec.score), 6)}
    if rec.reason:
        entry["reason"] = rec.reason
    if rec.category is not None:
        entry["category"] = rec.category
    return entry


class StateHead(Protocol):
    """What a message says of a state (a UserState, or just these of one)."""

    @property
    def user_id(self) -> str: ...

    @property
    def t_ref(self) -> int | None: ...

    @property
    def events_applied(self) -> int: ...


def build_message(
    state: StateHead,
    items: Any,
    *,
    version: int,
    model_version: str | None,
    generated_at: int | None = None,
    interests_now: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """One recommendation message exactly as CONTRACT section 3 defines it.

    ``items`` are entries in message form (a ranked batch's ``entries``, or
    :func:`item_entry` of Recommended, or those already serialised as an
    ``orjson.Fragment``); ``interests_now`` the user's interests when the ranking batch
    computed them (needed unless ``state`` is a whole UserState)."""
    return {
        "user_id": state.user_id,
        "version": version,
        "generated_at": generated_at if generated_at is not None else now_ms(),
        "as_of": state.t_ref,
        "model_version": model_version,
        "items": items,
        "interests": interests_now if interests_now is not None else interests(state),  # type: ignore[arg-type]
        "events_applied": state.events_applied,
    }


def dead_letter(
    rejection: Rejection,
    *,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    max_original: int = DLQ_MAX_ORIGINAL_BYTES,
) -> dict[str, Any]:
    """A rejected record as the dead-letter topic carries it.

    ``original`` is the raw value as text (base64 when it is not UTF-8), cut to its first
    ``max_original`` bytes so that a dead letter always fits where the original came from;
    ``original_bytes`` and ``original_sha256`` identify the whole value, and
    ``original_truncated`` says whether it was cut."""
    raw = value or b""
    kept = raw[:max_original]
    try:
        original = kept.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(kept) < len(raw) and exc.start >= len(kept) - 3:  # a character cut in two
            original = kept[: exc.start].decode("utf-8", "replace")
        else:
            original = base64.b64encode(kept).decode("ascii")
    return {
        "reason": str(rejection.reason),
        "detail": rejection.detail[:1000],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "original": original,
        "original_bytes": len(raw),
        "original_sha256": hashlib.sha256(raw).hexdigest(),
        "original_truncated": len(kept) < len(raw),
    }
