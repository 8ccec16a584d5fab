"""Raw Kafka record -> validated :class:`Event`, or a :class:`Rejection` with a reason code.

This is the only place that trusts nothing: everything downstream (the fold, the state,
the scorer) assumes an :class:`Event` is well formed.  Parsing never raises on bad input;
it returns a :class:`Rejection` whose ``reason`` is a short, stable code (a metric label
and the dead-letter ``reason`` field, CONTRACT section 1) and whose ``detail`` is for humans.

Hot path: a typed msgspec decoder whose schema (:class:`_Record`) does the type, length and
range checks while it decodes, so a valid record costs one C call plus a few lookups, and
a fetch's valid records come out as columns (:meth:`EventParser.parse_batch`) without an
:class:`Event` each.  The reasons and details are those of the 0.2.0 parser (``orjson``
plus hand-written checks): those checks stay, as :meth:`EventParser.build`, and decide
every record the schema refuses, because msgspec stops at the first problem in document
order while the contract's reason is the first in field order, after the whole value has
been found to be UTF-8 JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from hashlib import blake2b
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np
import orjson

from stream.core.types import Event, EventBatch, Rejection, RejectReason

# the reasons a record's value alone gives (the pipeline adds beyond_dedup_retention and
# unprocessable)
PARSE_REASONS = frozenset(RejectReason) - {
    RejectReason.beyond_dedup_retention,
    RejectReason.unprocessable,
}
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


# Integers past int64 go to the checks: msgspec bounds must fit an int64, and the checks
# see what orjson makes of them (an int up to 2**64 - 1, a float, so wrong_type, beyond).
_INT64_MAX = 2**63 - 1
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_NonNegative = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_Positive = Annotated[int, msgspec.Meta(ge=1, le=_INT64_MAX)]


class _Record(msgspec.Struct, gc=False):
    """CONTRACT section 1 as a schema: what :meth:`EventParser.build` checks field by field.

    Everything is optional here: absence (or JSON ``null``) is a rule about the record, not
    the field (``ts`` falls back to the Kafka timestamp, ids are derived), so the rules
    decide it after decoding.  ``type`` is a bare string because an empty or odd spelling
    is ``unknown_type``, not a length error.  msgspec's ``int`` refuses ``bool`` and floats
    such as ``1.0``, as the checks do.  Unknown fields are ignored (:func:`msgspec.convert`).
    """

    user_id: _Id | None = None
    item_id: _Id | None = None
    type: str | None = None
    ts: _NonNegative | None = None
    event_id: _Id | None = None
    category: _Id | None = None
    dwell_ms: _NonNegative | None = None
    quantity: _Positive | None = None


class _KnownFieldsOnly(_Record, forbid_unknown_fields=True):
    """The schema the hot path decodes raw bytes with.

    An unknown field sends the record to orjson instead of being skipped, because msgspec
    skips unknown values more leniently than orjson parses them (it accepts ``1e999``,
    invalid UTF-8 and nesting up to the interpreter's recursion limit there), and those are
    ``invalid_json`` / ``invalid_utf8`` by the contract.  With only known, scalar fields the
    decoder never recurses, so no nesting depth can exhaust the stack.
    """


_decode_known = msgspec.json.Decoder(_KnownFieldsOnly).decode


class _Columns(NamedTuple):
    """One scan's results: parallel lists of the valid events, plus the rejected records."""

    rows: list[int]
    user_id: list[str]
    item_id: list[str]
    type: list[str]
    ts: list[int]
    event_id: list[str]
    category: list[str | None]
    weight: list[float]
    extras: dict[int, tuple[int | None, int | None]]  # column -> (dwell_ms, quantity), if any
    rejected: list[tuple[int, Rejection]]


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
        a negative one (Kafka's "no timestamp") counts as absent.  This is a batch of one
        through :meth:`_scan`, so it cannot disagree with :meth:`parse_batch`, which is
        the one to call for a whole fetch (it builds no :class:`Event` per record).
        """
        now = _now_ms() if now_ms is None else now_ms
        out = self._scan((value,), (-1 if timestamp_ms is None else timestamp_ms,), now)
        if out.rejected:
            return out.rejected[0][1]
        dwell_ms, quantity = out.extras.get(0, (None, None))
        return Event(
            out.user_id[0],
            out.item_id[0],
            out.type[0],
            out.ts[0],
            out.event_id[0],
            out.category[0],
            out.weight[0],
            dwell_ms,
            quantity,
        )

    def parse_batch(
        self,
        values: Sequence[bytes | None],
        timestamps_ms: Sequence[int],
        now_ms: int,
    ) -> tuple[EventBatch, list[tuple[int, Rejection]]]:
        """Parse every record of one fetch: the valid ones as columns, the rest with reasons.

        Record ``i`` gets exactly what ``parse(values[i], timestamp_ms=timestamps_ms[i],
        now_ms=now_ms)`` would give; ``EventBatch.rows`` says which record each event came
        from, and each rejection carries its record's index.  Records are decoded one by
        one: joining them into one JSON array could turn two broken records into one valid
        object.  (The batch carries no ``dwell_ms`` / ``quantity``: they are in ``weight``.)
        """
        if len(values) != len(timestamps_ms):
            raise ValueError(f"{len(values)} values but {len(timestamps_ms)} timestamps")
        if isinstance(timestamps_ms, np.ndarray):
            timestamps_ms = timestamps_ms.tolist()  # numpy integers are not ``int`` to the rules
        out = self._scan(values, timestamps_ms, now_ms)
        batch = EventBatch(
            rows=np.array(out.rows, np.int64),
            user_id=out.user_id,
            item_id=out.item_id,
            type=out.type,
            ts=np.array(out.ts, np.int64),
            event_id=out.event_id,
            category=out.category,
            weight=np.array(out.weight, np.float64),
        )
        return batch, out.rejected

    def _scan(
        self, values: Sequence[bytes | None], timestamps_ms: Sequence[int], now_ms: int
    ) -> _Columns:
        """The one implementation of the rules, for ``parse`` and ``parse_batch`` alike.

        A record the schema accepts, with a known type and nothing missing or in the
        future, is appended inline: that is nearly every record, so it gets no function
        call beyond the decoder (and the id derivation when it has no id).  Anything else
        is decided by :meth:`build` or :meth:`_recover`.
        """
        out = _Columns([], [], [], [], [], [], [], [], {}, [])
        rows, user_ids, item_ids, type_names, times, event_ids, categories = out[:7]
        extras, weights, rejected = out.extras, out.weight, out.rejected
        types = self._types
        catalog = self._catalog
        max_bytes = self._max_bytes
        limit = now_ms + self._max_future_ms
        decode = _decode_known
        derive = derive_event_id
        for i, value in enumerate(values):
            rec: _Record | Event | Rejection
            if value and len(value) <= max_bytes:
                try:
                    rec = decode(value)
                except (msgspec.MsgspecError, RecursionError):
                    rec = self._recover(value, timestamps_ms[i], now_ms)
            else:
                rec = self._recover(value, timestamps_ms[i], now_ms)
            if type(rec) is Rejection:
                rejected.append((i, rec))
                continue
            if type(rec) is Event:  # a record only the checks can decide accepted it
                self._append(out, i, rec)
                continue
            user_id = rec.user_id
            item_id = rec.item_id
            type_name = rec.type
            hit = types.get(type_name)  # type: ignore[arg-type]
            if hit is None and type_name is not None:
                hit = self._resolve(type_name)  # another spelling: " Fav ", "PV"
            ts = rec.ts
            if ts is None:
                ts = timestamps_ms[i]
                if ts < 0:
                    ts = None
            if (
                hit is None
                or user_id is None
                or item_id is None
                or type(ts) is not int
                or ts > limit
            ):
                result = self.build(
                    user_id=user_id,
                    item_id=item_id,
                    type=type_name,
                    ts=ts,
                    event_id=rec.event_id,
                    category=rec.category,
                    dwell_ms=rec.dwell_ms,
                    quantity=rec.quantity,
                    now_ms=now_ms,
                )
                if type(result) is Rejection:
                    rejected.append((i, result))
                else:
                    self._append(out, i, result)  # type: ignore[arg-type]
                continue
            canonical, weight = hit
            event_id = rec.event_id
            if event_id is None:
                event_id = derive(user_id, item_id, canonical, ts)
            category = rec.category
            if category is None and catalog is not None:
                category = catalog.get(item_id)
            dwell_ms = rec.dwell_ms
            quantity = rec.quantity
            if dwell_ms is not None or quantity is not None:
                extras[len(weights)] = (dwell_ms, quantity)
                weight = event_weight(weight, dwell_ms, quantity)
            rows.append(i)
            user_ids.append(user_id)
            item_ids.append(item_id)
            type_names.append(canonical)
            times.append(ts)
            event_ids.append(event_id)
            categories.append(category)
            weights.append(weight)
        return out

    @staticmethod
    def _append(out: _Columns, i: int, event: Event) -> None:
        if event.dwell_ms is not None or event.quantity is not None:
            out.extras[len(out.weight)] = (event.dwell_ms, event.quantity)
        out.rows.append(i)
        out.user_id.append(event.user_id)
        out.item_id.append(event.item_id)
        out.type.append(event.type)
        out.ts.append(event.ts)
        out.event_id.append(event.event_id)
        out.category.append(event.category)
        out.weight.append(event.weight)

    def _recover(
        self, value: bytes | None, timestamp_ms: int, now_ms: int
    ) -> _Record | Event | Rejection:
        """A record the typed decoder refused: the 0.2.0 parser's checks decide it.

        orjson settles whether the whole value is UTF-8 JSON (with its messages in the
        details); a valid object with unknown fields goes back to the schema through
        :func:`msgspec.convert`, which ignores them.  Whatever the schema still refuses is
        classified by :meth:`build`: mapping msgspec's message instead would name the first
        bad field in document order, and the contract's reason is the first in field order
        (``{"item_id": 5}`` is ``missing_field`` for ``user_id``, not ``wrong_type``), with
        details that need the values (lengths, numbers).
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
        try:
            return msgspec.convert(obj, _Record)
        except msgspec.ValidationError:
            pass
        ts = obj.get("ts")
        if ts is None and timestamp_ms >= 0:
            ts = timestamp_ms
        return self.build(
            user_id=obj.get("user_id"),
            item_id=obj.get("item_id"),
            type=obj.get("type"),
            ts=ts,
            event_id=obj.get("event_id"),
            category=obj.get("category"),
            dwell_ms=obj.get("dwell_ms"),
            quantity=obj.get("quantity"),
            now_ms=now_ms,
        )

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
        canonical, base = self._resolve(type)  # type: ignore[misc]  # checked above
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

    def _resolve(self, type_: str) -> tuple[str, float] | None:
        """Case-insensitive type lookup; exact spelling first as the cheap common case."""
        hit = self._types.get(type_)
        if hit is None:
            hit = self._types.get(type_.strip().lower())
        return hit

    def _check_type(self, type_: Any) -> Rejection | None:
        if type_ is None:
            return Rejection(RejectReason.missing_field, "type is required")
        if builtin_type(type_) is not str:
            got = builtin_type(type_).__name__
            return Rejection(RejectReason.wrong_type, f"type must be a string, got {got}")
        if self._resolve(type_) is not None:
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
