"""What a worker does with a data directory left by a crash, without starting Faust."""

from __future__ import annotations

from pathlib import Path

from stream.worker.main import RUNNING_MARKER, discard_stores_after_crash


def make_stores(root: Path) -> Path:
    tables = root / "v1" / "tables"
    (tables / "users-0.db").mkdir(parents=True)
    (tables / "users-0.db" / "000001.sst").write_bytes(b"x")
    return tables


def test_stores_of_a_crashed_worker_are_rebuilt(tmp_path: Path) -> None:
    tables = make_stores(tmp_path)
    (tmp_path / RUNNING_MARKER).write_text("4242")
    discard_stores_after_crash(tmp_path / RUNNING_MARKER, tables)
    assert not tables.exists()


def test_stores_of_a_clean_stop_are_kept(tmp_path: Path) -> None:
    tables = make_stores(tmp_path)
    discard_stores_after_crash(tmp_path / RUNNING_MARKER, tables)
    assert (tables / "users-0.db" / "000001.sst").exists()
