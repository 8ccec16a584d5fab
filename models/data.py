"""Event logs on disk -> contract-shaped records and validated events.

One reader serves `interest produce`, `interest train` and `interest evaluate`, so a file
means the same thing to the stream and to the offline code. Files are streamed line by
line; nothing here holds a whole file unless the caller collects it.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

from stream.config import Settings, event_parser
from stream.core.errors import DataFormatError
from stream.core.events import EventParser
from stream.core.types import Event, Rejection

FORMATS = ("auto", "taobao", "retailrocket", "csv", "jsonl")
CONTRACT_FIELDS = (
    "user_id",
    "item_id",
    "type",
    "ts",
    "event_id",
    "category",
    "dwell_ms",
    "quantity",
)
INT_FIELDS = ("ts", "dwell_ms", "quantity")
TAOBAO_COLUMNS = ("user_id", "item_id", "category", "type", "ts")
RETAILROCKET_MAPPING = {
    "user_id": "visitorid",
    "item_id": "itemid",
    "type": "event",
    "ts": "timestamp",
}
SECONDS_BEFORE = 100_000_000_000  # an epoch below this is in seconds (year 5138 in ms)


def detect_format(path: Path) -> str:
    """Guess the layout from the first non-empty line."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        first = next((line.strip() for line in fh if line.strip()), "")
    if not first:
        raise DataFormatError(f"{path}: empty file")
    if first.startswith("{"):
        return "jsonl"
    header = [c.strip().lower() for c in first.split(",")]
    if "visitorid" in header and "itemid" in header:
        return "retailrocket"
    if len(header) == 5 and header[4].isdigit():
        return "taobao"
    return "csv"


def parse_columns(spec: str | None) -> dict[str, str]:
    """'user_id=visitor,item_id=sku' -> {'user_id': 'visitor', 'item_id': 'sku'}."""
    if not spec:
        return {}
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        field, sep, column = part.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or field not in CONTRACT_FIELDS or not column:
            raise DataFormatError(
                f"--columns: {part!r} is not FIELD=COLUMN "
                f"with FIELD in {', '.join(CONTRACT_FIELDS)}"
            )
        mapping[field] = column
    return mapping


def to_millis(value: int) -> int:
    """Event logs mix seconds and milliseconds; the contract speaks milliseconds."""
    return value * 1000 if 0 <= value < SECONDS_BEFORE else value


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """Drop empty fields and turn numeric strings into ints, as a producer would send them."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if value is None or value == "":
            continue
        if key in INT_FIELDS and isinstance(value, str):
            # text that is no number stays text: validation rejects it with a precise reason
            with contextlib.suppress(ValueError):
                value = int(float(value)) if "." in value or "e" in value.lower() else int(value)
        out[key] = value
    if isinstance(out.get("ts"), int):
        out["ts"] = to_millis(out["ts"])
    return out


def _iter_taobao(fh: io.TextIOBase) -> Iterator[dict[str, Any]]:
    for row in csv.reader(fh):
        if len(row) == 5:
            yield _clean(dict(zip(TAOBAO_COLUMNS, row, strict=True)))


def _iter_mapped(fh: io.TextIOBase, mapping: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(fh)
    header = {name.strip(): name for name in reader.fieldnames or ()}
    columns = {field: mapping.get(field, field) for field in CONTRACT_FIELDS}
    missing = [
        c for f, c in columns.items() if f in ("user_id", "item_id", "type") and c not in header
    ]
    if missing:
        raise DataFormatError(f"CSV header lacks column(s) {', '.join(missing)}; use --columns")
    present = {field: header[col] for field, col in columns.items() if col in header}
    for row in reader:
        yield _clean({field: row.get(col) for field, col in present.items()})


def _iter_jsonl(fh: io.TextIOBase, path: Path) -> Iterator[dict[str, Any]]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno}: not JSON: {exc}") from None
        if isinstance(record, dict):
            yield record


def iter_raw(path: Path, fmt: str = "auto", columns: str | None = None) -> Iterator[dict[str, Any]]:
    """Contract-shaped dicts (``ts`` in epoch ms) from one event file, in file order."""
    if fmt not in FORMATS:
        raise DataFormatError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    path = Path(path)
    kind = detect_format(path) if fmt == "auto" else fmt
    with path.open("r", encoding="utf-8", newline="") as fh:
        if kind == "jsonl":
            yield from _iter_jsonl(fh, path)
        elif kind == "taobao":
            yield from _iter_taobao(fh)
        elif kind == "retailrocket":
            yield from _iter_mapped(fh, RETAILROCKET_MAPPING | parse_columns(columns))
        else:
            yield from _iter_mapped(fh, parse_columns(columns))


def iter_events(
    paths: Iterable[Path],
    parser: EventParser,
    *,
    fmt: str = "auto",
    columns: str | None = None,
    rejected: dict[str, int] | None = None,
) -> Iterator[Event]:
    """Validated events in file order; rejections are counted by reason, not raised."""
    for path in paths:
        for record in iter_raw(path, fmt, columns):
            result = parser.build(**{k: record.get(k) for k in CONTRACT_FIELDS}, now_ms=None)
            if isinstance(result, Rejection):
                if rejected is not None:
                    rejected[result.reason] = rejected.get(result.reason, 0) + 1
                continue
            yield result


def load_events(
    paths: Iterable[Path],
    parser: EventParser | None = None,
    *,
    settings: Settings | None = None,
    fmt: str = "auto",
    columns: str | None = None,
    rejected: dict[str, int] | None = None,
) -> list[Event]:
    """Every valid event of the files, sorted by event time (ties keep file order)."""
    if parser is None:
        parser = event_parser(settings if settings is not None else Settings())
    events = list(iter_events(paths, parser, fmt=fmt, columns=columns, rejected=rejected))
    events.sort(key=lambda e: e.ts)
    return events
