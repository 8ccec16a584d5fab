"""Housekeeping: the model-info gauge and the parser follow the model, a scan after
recovery finds unpublished users, expiry deletes quiet ones."""

from __future__ import annotations

import orjson

from stream.config import Settings, event_parser
from stream.core.interest import InterestConfig, fold
from stream.core.scheduling import DirtyUsers
from stream.core.types import Event
from stream.worker import metrics
from stream.worker.housekeeping import Expiry, ModelTracker, PendingScan
from stream.worker.rescore import PublishedLog
from stream.worker.state_store import StateStore, UserPartitioner
from tests.support.fakes import FakeProducer, FakeScorer, FakeTable, fake_writer

CFG = InterestConfig()
T0 = 1_700_000_000_000


def model_info() -> dict[str, float]:
    return {s.labels["version"]: s.value for m in metrics.MODEL_INFO.collect() for s in m.samples}


def test_model_info_is_set_for_the_model_loaded_at_start_and_follows_swaps() -> None:
    scorer = FakeScorer(model_version="17", catalog={"i1": "c1"})
    tracker = ModelTracker(scorer, lambda catalog: event_parser(Settings(), catalog))
    assert model_info() == {"17": 1.0}
    event = tracker.parser().parse(b'{"user_id": "u", "item_id": "i1", "type": "pv", "ts": 1}')
    assert event.category == "c1"  # the catalog fills in absent categories
    scorer.model_version, scorer.catalog = "18", {"i1": "c9"}
    event = tracker.parser().parse(b'{"user_id": "u", "item_id": "i1", "type": "pv", "ts": 1}')
    assert event.category == "c9" and model_info() == {"18": 1.0}
    scorer.model_version = None
    tracker.refresh()
    assert model_info() == {}


def states_with(users: dict[str, int]) -> StateStore:
    store = StateStore(
        FakeTable(), "c", fake_writer(FakeProducer(), lambda _r: None), UserPartitioner(2)
    )
    for user, ts in users.items():
        state = store.read_or_new(user, CFG)
        fold(state, [Event(user, "i", "click", ts, f"{user}{ts}", "c1", 2.0)], CFG)
        store.changed(user, store.partition_of(user))
    store.flush()
    store.cache.clear()
    return store


def test_a_scan_after_recovery_marks_users_never_published() -> None:
    store = states_with({"a": T0, "b": T0})
    published = FakeTable()
    db = published.data._db_for_partition(store.partition_of("a"))
    db.put(b"a", orjson.dumps({"version": 3, "events_applied": 1}))
    dirty = DirtyUsers()
    recovering = [True]
    scan = PendingScan(
        store,
        PublishedLog(published, store.partition_of),
        dirty,
        lambda: {0, 1},
        lambda: recovering[0],
    )
    assert scan.run() == 0  # nothing before recovery
    scan.pending = True
    assert scan.run() == 0  # still recovering
    recovering[0] = False
    assert scan.run() == 1 and dirty.count() == 1
    assert "b" in dirty.by_partition[store.partition_of("b")]
    assert scan.run() == 0  # once per recovery


def test_expiry_deletes_users_whose_interests_decayed_away() -> None:
    old = T0 - 400 * 86_400_000
    store = states_with({"quiet": old, "active": 10**13})
    expiry = Expiry(store, lambda: {0, 1}, threshold=0.01)
    assert expiry.run() == 1
    assert store.read("quiet") is None and store.read("active") is not None
