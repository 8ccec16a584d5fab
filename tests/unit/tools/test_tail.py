"""What `interest tail` and `interest inspect` print (no broker: formatting and HTTP only)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import unquote

import pytest
from rich.cells import cell_len

from stream.config import load_settings
from stream.core.errors import Unreachable
from stream.tools.tail import (
    COLUMNS,
    WIDTHS,
    TablePrinter,
    format_line,
    inspect_user,
    interests_summary,
    summary_row,
)

GENERATED_AT = int(datetime(2025, 11, 28, 9, 5, 7).timestamp() * 1000)


def message(user: str = "u1", **changes: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "user_id": user,
        "version": 17,
        "generated_at": GENERATED_AT,
        "as_of": GENERATED_AT - 1000,
        "model_version": "1764331200",
        "items": [
            {"item_id": f"i{n}", "score": 0.83, "reason": "your_interest", "category": "c1"}
            for n in range(7)
        ],
        "interests": {
            "long": [
                {"category": "c12", "strength": 3.25},
                {"category": "c7", "strength": 2e-6},
                {"category": "c3", "strength": 4e-7},  # decayed to nothing: left out
            ],
            "short": [{"category": "c1", "strength": 5e-9}],
        },
        "events_applied": 42,
    }
    msg.update(changes)
    return msg


def columns_of(line: str) -> list[str]:
    """The line cut at the fixed column starts, counted in terminal cells (wide characters
    count two), so a column that is too wide or too narrow shows as shifted text."""
    starts, at = [], 0
    for width in WIDTHS:
        starts.append(at)
        at += width + 1
    starts.append(at)
    chunks = ["" for _ in starts]
    cell = 0
    for ch in line:
        column = max(i for i, start in enumerate(starts) if start <= cell)
        chunks[column] += ch
        cell += cell_len(ch)
    return chunks


def test_piped_table_is_plain_aligned_and_one_line_per_message() -> None:
    out = io.StringIO()  # not a terminal
    printer = TablePrinter(out)
    long_id = "a-user-id-much-longer-than-its-column\nwith a newline"
    for msg in (message(), message("ユーザー2", model_version=None), message(long_id)):
        printer.write(msg)
    text = out.getvalue()
    assert "\x1b" not in text  # no ANSI escape codes when piped
    lines = text.splitlines()
    assert len(lines) == 4  # a header and one line per message
    assert lines[0].split()[:2] == ["time", "user"] and lines[0].count("top items") == 1
    assert columns_of(lines[0])[-1] == "top items"
    for line in lines[1:]:
        chunks = columns_of(line)
        assert all(chunk.endswith(" ") for chunk in chunks[:-1]), line  # the separators
        assert (chunks[2].strip(), chunks[3].strip()) == ("17", "42"), line
        assert chunks[-1].startswith("i0(0.83/your_interest)"), line
    first = lines[1]
    assert first.startswith("09:05:07 u1 ")
    assert "c12:3.25, c7:2e-06" in first and "c3:" not in first  # below the 1e-6 floor
    assert "i4(0.83/your_interest)" in first and "i5(" not in first  # top 5 items
    assert "\u2026" in lines[3] and "newline" not in lines[3].split()[1]


def test_a_terminal_gets_a_bold_header_only() -> None:
    out = io.StringIO()
    TablePrinter(out, color=True).write(message())
    header, row = out.getvalue().splitlines()
    assert header.startswith("\x1b[1m") and "\x1b" not in row


def test_summary_row_matches_the_columns_and_tolerates_missing_fields() -> None:
    row = summary_row(message(generated_at=None, interests={}, items=[]))
    assert len(row) == len(COLUMNS)
    assert row[0] == "-" and row[5:] == ("-", "-", "-")
    assert format_line(row).startswith("-        u1")


def test_interest_floor() -> None:
    entries = [{"category": "a", "strength": 1e-6}, {"category": "b", "strength": 9.9e-7}]
    assert interests_summary(entries) == "a:1e-06"
    assert interests_summary([]) == "-"


# --------------------------------------------------------------------------- inspect


class _Worker(BaseHTTPRequestHandler):
    """A stand-in for a worker's two user views; records the paths asked for."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        user = unquote(self.path.split("/")[2])
        if self.path.endswith("/recommendations"):
            body = {"user_id": user, "items": [{"item_id": "商品-1"}]}
        else:
            body = {"user_id": user, "categories": {"long": {"类别": 1.5}}}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def worker_url() -> Iterator[str]:
    _Worker.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_inspect_prints_non_ascii_ids_as_they_are_and_takes_a_trailing_slash(
    worker_url: str,
) -> None:
    text = inspect_user(load_settings(), "użytkownik/1", base_url=worker_url + "/")
    assert _Worker.paths == [
        "/users/u%C5%BCytkownik%2F1/interest",
        "/users/u%C5%BCytkownik%2F1/recommendations",
    ]  # no '//' from the trailing slash; the id quoted as one path segment
    assert '"użytkownik/1"' in text and "商品-1" in text and "类别" in text
    assert "\\u" not in text
    assert json.loads(text)["interest"]["user_id"] == "użytkownik/1"


def test_inspect_without_a_worker_is_one_error_line() -> None:
    from stream.tools.broker import free_port

    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(Unreachable, match="no worker answers") as caught:
        inspect_user(load_settings(), "u1", base_url=url)
    assert "\n" not in str(caught.value)
