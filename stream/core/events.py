"""Raw Kafka record -> validated :class:`Event`, or a :class:`Rejection` with a reason code.

This is the only place that trusts nothing: everything downstream (the fold, the state,
the scorer) assumes an :class:`Event` is well formed.  Parsing never raises on bad input;
it returns a :class:`Rejection` whose ``reason`` is a short, stable code (a metric label
and the dead-letter ``reason`` field, CONTRACT section 1) and whose ``detail`` is for humans.

Hot path: one ``orjson.loads`` plus a handful of dict lookups and ``type(x) is int``
checks per record - no regex, no pydantic - because this runs for every event.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from hashlib import blake2b
from typing import Any

import orjson

from stream.core.types import Event, Rejection, RejectReason

MAX_ID_CHARS = 128
DWELL_UNIT_MS = 10_000.0
DWELL_MIN_FACTOR = 0.1
DWELL_MAX_FACTOR = 6.0
QUANTITY_MAX_FACTOR = 10


def derive_event_id(user_id: str, item_id: str, type_: str, ts: int) -> str:
    """Deterministic id for events sent without one, so a re-sent copy dedups too.

    Callers pass the *canonical* type, so ``pv`` and ``browse`` spellings of the same
    action derive the same id.  The unit separator cannot be confused with id text
    boundaries the way a plain ``,`` could (``"a,b"+"c"`` vs ``"a"+"b,c"``).
    """
    raw = f"{user_id}\x1f{item_id}\x1f{type_}\x1f{ts}".encode()
    return blake2b(raw, digest_size=12).hexdigest()


def event_weight(base: float, dwell_ms: int | None, quantity: int | None) -> float:
    """CONTRACT section 1: ``base * clamp(dwell/10000, 0.1, 6) * min(quantity, 10)``."""
    w = base
    if dwell_ms is not None:
        w *= min(max(dwell_ms / DWELL_UNIT_MS, DWELL_MIN_FACTOR), DWELL_MAX_FACTOR)
    if quantity is not None:
        w *= min(quantity, QUANTITY_MAX_FACTOR)
    return w


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_id(name: str, value: Any, required: bool) -> Rejection | None:
    """Validate one id-like string field (1-128 chars); ``None`` means it is fine."""
    if value is None:
        return Rejection(RejectReason.missing_field, f"{name} is required") if required else None
    if type(value) is not str:
        return Rejection(
            RejectReason.wrong_type, f"{name} must be a string, got {type(value).__name__}"
        )
    if not value:
        return Rejection(RejectReason.empty_id, f"{name} must not be empty")
    if len(value) > MAX_ID_CHARS:
        return Rejection(
            RejectReason.id_too_long, f"{name} has {len(value)} characters (max {MAX_ID_CHARS})"
        )
    return None


def _check_int(name: str, value: Any, minimum: int) -> Rejection | None:
    """Validate an optional integer field; ``bool`` is rejected although it subclasses int."""
    if value is None:
        return None
    if type(value) is not int:
        return Rejection(
            RejectReason.wrong_type, f"{name} must be an integer, got {type(value).__name__}"
        )
    if value < minimum:
        return Rejection(RejectReason.negative_value, f"{name} must be >= {minimum}, got {value}")
    return None


class EventParser:
    """Validates records against the configured event types, weights and limits.

    One instance per worker; it is immutable after construction and cheap to call.
    ``catalog`` (item_id -> category) fills in ``category`` when an event has none.
    """

    __slots__ = ("_catalog", "_max_bytes", "_max_future_ms", "_types")

    def __init__(
        self,
        weights: Mapping[str, float],
        aliases: Mapping[str, str],
        *,
        max_bytes: int = 65536,
        max_future_ms: int = 86_400_000,
        catalog: Mapping[str, str] | None = None,
    ) -> None:
        types: dict[str, tuple[str, float]] = {}
        canon = {k.strip().lower(): float(w) for k, w in weights.items()}
        for name, w in canon.items():
            types[name] = (name, w)
        for alias, target in aliases.items():
            t = target.strip().lower()
            if t not in canon:
                raise ValueError(f"alias {alias!r} points to type {target!r} without a weight")
            types[alias.strip().lower()] = (t, canon[t])
        self._types = types
        self._max_bytes = max_bytes
        self._max_future_ms = max_future_ms
        self._catalog = catalog

    def parse(
        self,
        value: bytes | None,
        *,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
        now_ms: int | None = None,
    ) -> Event | Rejection:
        """Parse one Kafka record value.

        ``key`` is accepted but not checked against ``user_id``: the pipeline re-keys
        mismatching records, so a wrong key is not a reason to drop the event.
        ``timestamp_ms`` (the record's Kafka timestamp) stands in for an absent ``ts``;
        a negative one (Kafka's "no timestamp") counts as absent.
        """
        if not value:
            return Rejection(RejectReason.invalid_json, "record has no value")
        if len(value) > self._max_bytes:
            return Rejection(
                RejectReason.too_large, f"value has {len(value)} bytes (max {self._max_bytes})"
            )
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return _decode_rejection(value, exc)
        if type(obj) is not dict:
            return Rejection(
                RejectReason.not_object, f"value is a JSON {type(obj).__name__}, not an object"
            )
        ts = obj.get("ts")
        if ts is None and timestamp_ms is not None and timestamp_ms >= 0:
            ts = timestamp_ms
        now = _now_ms() if now_ms is None else now_ms
        fast = self._fast(obj, ts, now)
        if fast is not None:
            return fast
        return self.build(
            user_id=obj.get("user_id"),
            item_id=obj.get("item_id"),
            type=obj.get("type"),
            ts=ts,
            event_id=obj.get("event_id"),
            category=obj.get("category"),
            dwell_ms=obj.get("dwell_ms"),
            quantity=obj.get("quantity"),
            now_ms=now,
        )

    def _fast(self, obj: dict[str, Any], ts: Any, now: int) -> Event | None:
        """The common, valid record in a few inline checks; None sends it to the full path.

        Only accepts what :meth:`build` would accept with the same result; anything
        unusual (aliases needing case folding, dwell, quantity, any doubt) goes there.
        """
        user_id = obj.get("user_id")
        item_id = obj.get("item_id")
        type_ = obj.get("type")
        hit = self._types.get(type_) if type(type_) is str else None
        event_id = obj.get("event_id")
        category = obj.get("category")
        if (
            hit is None
            or type(user_id) is not str
            or type(item_id) is not str
            or type(ts) is not int
            or not 0 <= ts <= now + self._max_future_ms
            or not 0 < len(user_id) <= MAX_ID_CHARS
            or not 0 < len(item_id) <= MAX_ID_CHARS
            or "dwell_ms" in obj
            or "quantity" in obj
        ):
            return None
        if event_id is None:
            event_id = derive_event_id(user_id, item_id, hit[0], ts)
        elif type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_CHARS:
            return None
        if category is None:
            if self._catalog is not None:
                category = self._catalog.get(item_id)
        elif type(category) is not str or not 0 < len(category) <= MAX_ID_CHARS:
            return None
        return Event(user_id, item_id, hit[0], ts, event_id, category, hit[1])

    def build(
        self,
        *,
        user_id: Any,
        item_id: Any,
        type: Any,
        ts: Any,
        event_id: Any = None,
        category: Any = None,
        dwell_ms: Any = None,
        quantity: Any = None,
        now_ms: int | None = None,
    ) -> Event | Rejection:
        """Validate already-split fields (file readers, tests) with the same rules as parse.

        A JSON ``null`` for an optional field means "absent".
        """
        bad = (
            _check_id("user_id", user_id, True)
            or _check_id("item_id", item_id, True)
            or self._check_type(type)
            or _check_ts(ts)
            or _check_id("event_id", event_id, False)
            or _check_id("category", category, False)
            or _check_int("dwell_ms", dwell_ms, 0)
            or _check_int("quantity", quantity, 1)
        )
        if bad is not None:
            return bad
        now = _now_ms() if now_ms is None else now_ms
        if ts > now + self._max_future_ms:
            return Rejection(
                RejectReason.future_ts,
                f"ts {ts} is {ts - now} ms ahead of now (max {self._max_future_ms})",
            )
        canonical, base = self._resolve(type)
        if event_id is None:
            event_id = derive_event_id(user_id, item_id, canonical, ts)
        if category is None and self._catalog is not None:
            category = self._catalog.get(item_id)
        return Event(
            user_id,
            item_id,
            canonical,
            ts,
            event_id,
            category,
            event_weight(base, dwell_ms, quantity),
            dwell_ms,
            quantity,
        )

    def _resolve(self, type_: str) -> tuple[str, float]:
        """Case-insensitive type lookup; exact spelling first as the cheap common case."""
        hit = self._types.get(type_)
        if hit is None:
            hit = self._types[type_.strip().lower()]
        return hit

    def _check_type(self, type_: Any) -> Rejection | None:
        if type_ is None:
            return Rejection(RejectReason.missing_field, "type is required")
        if builtin_type(type_) is not str:
            got = builtin_type(type_).__name__
            return Rejection(RejectReason.wrong_type, f"type must be a string, got {got}")
        if type_ in self._types or type_.strip().lower() in self._types:
            return None
        shown = type_ if len(type_) <= 40 else type_[:40] + "..."
        return Rejection(RejectReason.unknown_type, f"unknown event type {shown!r}")


builtin_type = type  # ``build`` has a keyword named ``type``; keep the builtin reachable


def _check_ts(ts: Any) -> Rejection | None:
    if ts is None:
        return Rejection(RejectReason.missing_field, "ts is absent and the record has no timestamp")
    return _check_int("ts", ts, 0)


def _decode_rejection(value: bytes, exc: Exception) -> Rejection:
    """Tell invalid UTF-8 apart from invalid JSON (orjson reports both the same way)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return Rejection(
            RejectReason.invalid_utf8, f"value is not UTF-8: {uexc.reason} at byte {uexc.start}"
        )
    return Rejection(RejectReason.invalid_json, f"value is not JSON: {exc}")
