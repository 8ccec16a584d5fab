"""The batch ranking (arrays over a whole rescoring batch) equals the per-user ranking of
0.2.0 (tests/support/reference_ranking.py): same top-k items in the same order, same
reasons and categories, scores within 1e-6, on synthetic and on real Taobao users."""

from __future__ import annotations

import csv
import random
from collections import defaultdict

import numpy as np
import orjson
import pytest

from stream.config import Settings, event_parser, interest_config, trend_config
from stream.core.candidates import recommend_batch
from stream.core.interest import UserState, fold, new_state
from stream.core.trending import GlobalTrend, fold_trend, global_top, new_trend, snapshot
from stream.core.types import Event, Recommended, RecommendReason
from stream.tools.synthetic import generate
from tests.support import reference_ranking as reference
from tests.support.helpers import SHARED_DATA

T0 = 1_764_000_000_000


def world(events: list[Event], settings: Settings, fold_size: int = 3):
    icfg, tcfg = interest_config(settings), trend_config(settings)
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    states: list[UserState] = []
    for user, evs in by_user.items():
        state = new_state(user, icfg)
        for i in range(0, len(evs), fold_size):
            fold(state, evs[i : i + fold_size], icfg)
        states.append(state)
    trends = {}
    for e in events:
        if e.category is not None:
            trends.setdefault(e.category, new_trend(e.category, tcfg))
    for c, t in trends.items():
        fold_trend(t, [e for e in events if e.category == c], tcfg)
    view = {c: snapshot(t, tcfg.max_items) for c, t in trends.items()}
    return states, view


def synthetic(users: int, events: int, seed: int) -> list[Event]:
    parser = event_parser(Settings())
    records = generate(users, events, seed=seed, start_ms=T0, n_items=600, n_categories=25)
    return [parser.parse(orjson.dumps(r)) for r in records]


def assert_same(got: list[list[Recommended]], want: list[list[Recommended]]) -> None:
    assert len(got) == len(want)
    for n, (g, w) in enumerate(zip(got, want, strict=True)):
        assert [(r.item_id, r.reason, r.category) for r in g] == [
            (r.item_id, r.reason, r.category) for r in w
        ], f"user #{n}"
        np.testing.assert_allclose([r.score for r in g], [r.score for r in w], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def synthetic_world():
    events = synthetic(800, 12_000, seed=3)
    states, view = world(events, Settings())
    g = GlobalTrend(trend_config(Settings()))
    g.fold(events)
    return states, view, g.top(100)


@pytest.mark.parametrize("policy", ["keep", "demote", "exclude"])
@pytest.mark.parametrize("limit,k", [(200, 20), (30, 10), (12, 20)])
def test_equal_to_the_per_user_ranking(synthetic_world, policy: str, limit: int, k: int) -> None:
    states, view, top = synthetic_world
    for start in range(0, len(states), 256):
        batch = states[start : start + 256]
        got = recommend_batch(
            batch, trending=view, global_top=top, scorer=None, k=k, policy=policy, limit=limit
        )
        want = reference.recommend_batch(
            batch, trending=view, global_top=top, scorer=None, k=k, policy=policy, limit=limit
        )
        assert_same(got, want)


def test_equal_with_retrieval_lists_duplicates_and_purchases(synthetic_world) -> None:
    """Retrieval lists that repeat items, hit the users' own and purchased items."""
    states, view, top = synthetic_world
    rng = random.Random(5)
    items = sorted({i for s in states for i in s.items})
    batch = states[:300]
    retrieved = []
    for s in batch:
        own = list(s.items)
        picks = rng.sample(items, 40) + rng.sample(own, min(5, len(own))) + rng.sample(items, 3) * 2
        retrieved.append(
            [
                Recommended(i, 0.0, rng.choice(["c1", "c2", None]), "similar_to_your_interests")
                for i in picks
            ]
        )
    for policy in ("demote", "exclude"):
        got = recommend_batch(
            batch,
            trending=view,
            global_top=top,
            scorer=None,
            k=20,
            policy=policy,
            retrieved=retrieved,
        )
        cands_new = [
            reference.generate(s, trending=view, global_top=top, retrieved=r, policy=policy)
            for s, r in zip(batch, retrieved, strict=True)
        ]
        want = [
            reference.blend(s, c, reference.components(s, c, view, top), 20, policy)
            for s, c in zip(batch, cands_new, strict=True)
        ]
        assert_same(got, want)
        assert any(r.reason == RecommendReason.similar_to_your_interests for rs in got for r in rs)


def test_equal_for_users_with_one_event_and_a_thin_union(synthetic_world) -> None:
    _, view, top = synthetic_world
    settings = Settings()
    icfg = interest_config(settings)
    states = []
    for n in range(50):
        s = new_state(f"new{n}", icfg)
        cat = None if n % 3 == 0 else f"c{n % 25}"
        fold(s, [Event(s.user_id, f"i{n}", "click", T0 + n, f"e{n}", cat, 2.0)], icfg)
        states.append(s)
    got = recommend_batch(states, trending=view, global_top=top, scorer=None, k=20)
    want = reference.recommend_batch(states, trending=view, global_top=top, scorer=None, k=20)
    assert_same(got, want)
    assert any(r.reason == RecommendReason.popular for rs in got for r in rs)


def test_equal_at_a_later_read_time_and_with_category_trends() -> None:
    """Training reads features at event time; evaluation passes CategoryTrend objects."""
    settings = Settings()
    events = synthetic(60, 1500, seed=9)
    states, _ = world(events, settings, fold_size=7)
    tcfg = trend_config(settings)
    trends = {}
    for e in events:
        t = trends.setdefault(e.category, new_trend(e.category, tcfg))
        fold_trend(t, [e], tcfg)
    top = global_top({c: snapshot(t) for c, t in trends.items()})
    for s in states[:40]:
        cands = reference.generate(s, trending=trends, global_top=top)
        later = (s.t_ref or 0) + 3_600_000
        from stream.core.features import components

        got = components(s, cands, trends, top, later)
        want = reference.components(s, cands, trends, top, later)
        for name in ("item", "cat", "trend", "trend_max", "global_rel", "purchased"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, atol=0)


TAOBAO = SHARED_DATA / "taobao_userbehavior_114users" / "UserBehavior.csv"


@pytest.mark.skipif(not TAOBAO.exists(), reason="the shared Taobao sample is absent")
def test_equal_on_real_taobao_users() -> None:
    parser = event_parser(Settings())
    with TAOBAO.open(newline="") as fh:
        rows = list(csv.reader(fh))
    events = []
    for u, i, c, b, ts in rows:
        ev = parser.parse(
            orjson.dumps(
                {"user_id": u, "item_id": i, "category": c, "type": b, "ts": int(ts) * 1000}
            ),
            now_ms=2_000_000_000_000,
        )
        if isinstance(ev, Event):
            events.append(ev)
    events.sort(key=lambda e: e.ts)
    states, view = world(events, Settings(), fold_size=5)
    g = GlobalTrend(trend_config(Settings()))
    g.fold(events)
    for policy in ("demote", "exclude"):
        got = recommend_batch(
            states, trending=view, global_top=g.top(100), scorer=None, k=20, policy=policy
        )
        want = reference.recommend_batch(
            states, trending=view, global_top=g.top(100), scorer=None, k=20, policy=policy
        )
        assert_same(got, want)
