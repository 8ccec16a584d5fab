"""Recommendation messages and the dirty-user bookkeeping, without Kafka."""

from __future__ import annotations

from stream.config import Settings, event_parser
from stream.core.candidates import rank_batch, score_request
from stream.core.interest import InterestConfig, fold, new_state
from stream.core.messages import build_message, item_entry
from stream.core.scheduling import DirtyUsers
from stream.core.types import Recommended


def state_with(events: list[tuple[str, str, str, int]]):
    parser = event_parser(Settings())
    state = new_state("u1")
    evs = [
        parser.build(user_id="u1", item_id=i, type=t, ts=ts, category=c) for i, c, t, ts in events
    ]
    fold(state, evs, InterestConfig())
    return state


def test_message_has_exactly_the_contract_fields() -> None:
    state = state_with([("i1", "c1", "click", 1000), ("i2", "c2", "purchase", 2000)])
    msg = build_message(
        state,
        [
            item_entry(Recommended("i9", 0.83, "c12", "trending_in_category")),
            item_entry(Recommended("i3", 0.5, None)),
        ],
        version=17,
        model_version="1764331200",
        generated_at=5,
    )
    assert set(msg) == {
        "user_id",
        "version",
        "generated_at",
        "as_of",
        "model_version",
        "items",
        "interests",
        "events_applied",
    }
    assert msg["as_of"] == 2000 and msg["events_applied"] == 2 and msg["version"] == 17
    assert msg["items"][0] == {
        "item_id": "i9",
        "score": 0.83,
        "reason": "trending_in_category",
        "category": "c12",
    }
    assert msg["items"][1] == {"item_id": "i3", "score": 0.5}
    long = msg["interests"]["long"]
    assert [c["category"] for c in long] == ["c2", "c1"]  # strongest first
    assert long[0]["strength"] == 8.0


def test_interests_are_capped_at_ten_per_horizon() -> None:
    state = state_with([(f"i{n}", f"c{n}", "browse", 1000 + n) for n in range(25)])
    msg = build_message(state, [], version=1, model_version=None)
    assert len(msg["interests"]["short"]) == 10 and len(msg["interests"]["long"]) == 10
    assert msg["items"] == [] and msg["model_version"] is None


def test_score_request_excludes_purchases_only_when_asked() -> None:
    state = state_with([("i1", "c1", "purchase", 1000), ("i2", "c1", "browse", 1000)])
    assert score_request([state], 4, 20, exclude_purchased=True).exclude == [{"i1"}]
    req = score_request([state], 4, 20, exclude_purchased=False)
    assert req.exclude == [set()] and req.vectors.shape == (1, 2, 4)
    assert req.categories[0][1]["c1"] == 9.0


def test_dirty_users_take_give_back_and_backoff() -> None:
    dirty = DirtyUsers(base_backoff_s=1.0, max_backoff_s=4.0)
    dirty.mark(0, "a", 10)
    dirty.mark(0, "a", 5)  # an older timestamp never replaces a newer one
    dirty.mark(1, "b", 7)
    taken = dirty.take([0, 1], 10)
    assert sorted(taken) == [(0, "a", 10), (1, "b", 7)] and dirty.count() == 0
    dirty.give_back(taken)
    assert dirty.count() == 2
    assert [dirty.failed(0.0) for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert not dirty.ready(3.0) and dirty.ready(4.0)
    dirty.succeeded()
    assert dirty.ready(0.0)
    dirty.drop_partitions([0])
    assert dirty.take([0, 1], 10) == [(1, "b", 7)]


def test_a_ranked_batch_gives_the_same_message_as_one_user_at_a_time() -> None:
    """The worker's path (rank_batch's columns and interests) and the per-user path agree."""
    state = state_with([(f"i{n}", f"c{n % 12}", "click", 1000 + 7 * n) for n in range(30)])
    ranked = rank_batch([state], trending={}, global_top=(), scorer=None, k=5)
    recs = ranked.lists()[0]
    batch = build_message(
        state,
        ranked.entries(0),
        version=3,
        model_version=None,
        generated_at=9,
        interests_now=ranked.interests[0],
    )
    single = build_message(
        state, [item_entry(r) for r in recs], version=3, model_version=None, generated_at=9
    )
    assert batch == single and len(batch["items"]) == 5
