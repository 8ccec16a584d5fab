"""The sequence model in the stream: a real broker, a real worker, a real SavedModel.

A version with a sequence model is exported to a model directory; the worker keeps each
user's recent events in its state (and shows them over HTTP), calls the version's
`next_items` signature once per rescoring batch, and publishes its items with the reason
``next_in_sequence``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from models.training.export import export_version
from tests.support.harness import Collector, Stack, WorkerProc, http_json, produce, wait_for
from tests.support.models import toy_artifacts

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(kafka_bootstrap: str) -> Stack:
    return Stack(bootstrap=kafka_bootstrap, suffix=uuid.uuid4().hex[:10])


def test_worker_publishes_next_in_sequence_items(stack: Stack, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    version = export_version(toy_artifacts(seed=3, sequence=True), model_dir)
    worker = WorkerProc(
        stack,
        tmp_path / "w",
        "w",
        INTEREST_MODEL_DIR=str(model_dir),
        INTEREST_TOP_K="200",  # every candidate is published, so every source shows
        INTEREST_SEQUENCE_LENGTH="8",
    ).start()
    recs = Collector(stack.bootstrap, stack.recommendations)
    try:
        worker.wait_ready(timeout_s=180)
        ts = 1_700_000_000_000
        events = [
            {
                "user_id": "seq-user",
                "item_id": f"i{n % 7}",
                "type": "browse" if n % 3 else "click",
                "ts": ts + 1000 * n,
                "category": f"c{n % 7 % 6}",
            }
            for n in range(12)
        ]
        # sent newest first: the state still keeps them in event-time order
        produce(
            stack.bootstrap,
            stack.events,
            [(b"seq-user", json.dumps(e).encode()) for e in reversed(events)],
        )
        msg = wait_for(
            lambda: (
                m
                if (m := recs.latest.get("seq-user"))
                and m.get("model_version") == version.name
                and any(i["reason"] == "next_in_sequence" for i in m["items"])
                else None
            ),
            120,
            lambda: (
                f"no next_in_sequence item for seq-user; latest: {recs.latest.get('seq-user')}"
                f"\n{worker.log_tail(30)}"
            ),
        )
        seq = [i for i in msg["items"] if i["reason"] == "next_in_sequence"]
        assert all(0.0 <= i["score"] <= 1.0 for i in seq), seq
        state = http_json(f"{worker.url}/users/seq-user/interest")
        recent = state["recent_events"]
        assert [e["ts"] for e in recent] == [e["ts"] for e in events[-8:]], recent
        assert [e["item_id"] for e in recent] == [e["item_id"] for e in events[-8:]]
    finally:
        recs.close()
        worker.stop()
