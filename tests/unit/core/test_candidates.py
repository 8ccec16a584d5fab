"""Candidate union, purchased policy, bounds, the no-model blend and model scoring."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.candidates import (
    DEMOTE_FACTOR,
    MIN_CANDIDATES,
    blend,
    candidate_batch,
    generate,
    recommend_batch,
)
from stream.core.features import (
    FEATURE_NAMES,
    W_CAT,
    W_OWN,
    W_TREND,
    blend_scores,
    components,
    features,
    features_from,
)
from stream.core.interest import InterestConfig, fold, new_state
from stream.core.trending import GlobalTrend, TrendConfig, fold_trend, new_trend, snapshot
from stream.core.types import Event, Recommended, RecommendReason

T0 = 1_700_000_000_000
ICFG = InterestConfig()
TCFG = TrendConfig()


def ev(user: str, item: str, cat: str, ts: int, kind: str = "browse", w: float = 1.0) -> Event:
    return Event(user, item, kind, ts, f"{user}-{item}-{ts}-{kind}", cat, w)


def user_state(events: list[Event]):
    state = new_state(events[0].user_id, ICFG)
    fold(state, events, ICFG)
    return state


def world() -> tuple[dict, list[tuple[str, str | None, float]]]:
    """Trending snapshots for c1 (10 items) and c2 (10 items), and a global top."""
    others = [
        ev(f"o{n}", f"{c}-t{k}", c, T0 + n, w=float(10 - k))
        for c in ("c1", "c2", "c3")
        for k in range(10)
        for n in range(2)
    ]
    trends = {}
    for c in ("c1", "c2", "c3"):
        trends[c] = new_trend(c, TCFG)
        fold_trend(trends[c], others, TCFG)
    g = GlobalTrend(TCFG)
    g.fold(others)
    return {c: snapshot(t) for c, t in trends.items()}, g.top(50)


def heavy_user():
    """Strong in c1 (and its item a), weaker in c2; bought a."""
    return user_state(
        [
            ev("u", "a", "c1", T0, "purchase", 8.0),
            ev("u", "a", "c1", T0 + 1000, w=1.0),
            ev("u", "b", "c1", T0 + 2000, w=2.0),
            ev("u", "x", "c2", T0 + 3000, w=1.0),
        ]
    )


@pytest.mark.parametrize("policy", ["keep", "demote", "exclude"])
def test_union_reasons_bounds_and_purchased_policy(policy: str) -> None:
    trending, top = world()
    state = heavy_user()
    cands = generate(state, trending=trending, global_top=top, policy=policy, limit=12)
    ids = [c.item_id for c in cands]
    assert len(ids) == len(set(ids)) <= 12
    assert all(c.reason in set(RecommendReason) for c in cands)
    assert ("a" in ids) == (policy != "exclude")
    assert {c.reason for c in cands if c.item_id in ("b", "x")} == {"your_interest"}
    c1 = sum(1 for c in cands if c.reason == "trending_in_category" and c.category == "c1")
    c2 = sum(1 for c in cands if c.reason == "trending_in_category" and c.category == "c2")
    assert c1 > c2 >= 1  # quotas follow the user's category strengths
    # c3 is not the user's: its items only come as global fill of a small union
    assert {c.reason for c in cands if c.category == "c3"} <= {"popular"}


def test_retrieval_joins_and_global_fills_only_thin_histories() -> None:
    trending, top = world()
    thin = user_state([ev("v", "z", "c9", T0)])
    cands = generate(thin, trending=trending, global_top=top, limit=200)
    assert len(cands) == MIN_CANDIDATES
    assert {c.reason for c in cands} == {"your_interest", "popular"}
    rich = heavy_user()
    retrieved = [Recommended("r1", 0.9, "c7"), Recommended("b", 0.8, "c1")]
    cands = generate(rich, trending=trending, global_top=top, retrieved=retrieved, limit=200)
    reasons = {c.item_id: c.reason for c in cands}
    assert reasons["r1"] == "similar_to_your_interests" and reasons["b"] == "your_interest"
    assert "popular" not in reasons.values()


def test_blend_orders_by_documented_strengths_and_demotes_purchases() -> None:
    trending, top = world()
    state = heavy_user()
    recs = recommend_batch(
        [state], trending=trending, global_top=top, scorer=None, k=50, policy="keep"
    )[0]
    assert all(0.0 <= r.score <= 1.0 for r in recs)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    by_id = {r.item_id: r for r in recs}
    assert recs[0].item_id == "a"  # the user's strongest item in the strongest category
    # the documented formula: 0.5 * own + 0.3 * cat + 0.2 * trend, each max-normalised
    items = state.items
    own_b = 0.5 * (items["b"][0] / items["a"][0] + items["b"][1] / items["a"][1])
    assert by_id["b"].score == pytest.approx(W_OWN * own_b + W_CAT * 1.0, rel=1e-5)
    assert by_id["c1-t0"].score == pytest.approx(W_CAT + W_TREND)  # strongest trending in c1
    cats = state.categories
    cat_x = 0.5 * (cats["c2"][0] / cats["c1"][0] + cats["c2"][1] / cats["c1"][1])
    assert by_id["x"].score == pytest.approx(
        W_OWN * 0.5 * (items["x"][0] / items["a"][0] + items["x"][1] / items["a"][1])
        + W_CAT * cat_x,
        rel=1e-5,
    )
    demoted = recommend_batch(
        [state], trending=trending, global_top=top, scorer=None, k=50, policy="demote"
    )[0]
    assert {r.item_id: r.score for r in demoted}["a"] == pytest.approx(
        by_id["a"].score * DEMOTE_FACTOR
    )
    assert demoted[0].item_id != "a"
    assert recommend_batch([], trending=trending, global_top=top, scorer=None, k=5) == []


def test_features_read_the_state_and_trending() -> None:
    trending, top = world()
    state = heavy_user()
    cands = generate(state, trending=trending, global_top=top, limit=50)
    f = features(state, cands, trending)
    assert f.shape == (len(cands), len(FEATURE_NAMES)) and f.dtype == np.float32
    col = {n: f[:, k] for k, n in enumerate(FEATURE_NAMES)}
    ids = [c.item_id for c in cands]
    a = ids.index("a")
    assert col["purchased"][a] == 1.0 and col["log1p_item_long"][a] > 0
    t0 = ids.index("c1-t0")
    assert col["trend_long_rel"][t0] == pytest.approx(1.0)
    assert col["log1p_item_long"][t0] == 0.0 and col["log1p_cat_long"][t0] > 0


@pytest.fixture(scope="module")
def toy_model():
    from models.training.embeddings import MFConfig
    from models.training.ranker import RankerConfig
    from models.training.train import TrainConfig, train
    from stream.config import Settings

    events = [
        ev(f"u{u}", f"i{(u % 3) * 5 + (n * 7 + u) % 5}", f"c{u % 3}", T0 + 60_000 * n + u)
        for u in range(12)
        for n in range(12)
    ]
    cfg = TrainConfig(mf=MFConfig(dim=4, iterations=3), ranker=RankerConfig(hidden=(8,), epochs=2))
    return train(events, Settings(embedding_dim=4), seed=1, config=cfg, epochs=2), events


def test_model_scores_every_candidate_including_new_items(toy_model) -> None:
    model, events = toy_model
    scorer = model.scorer()
    vectors = model.item_vectors(scorer.model_version)
    state = new_state("u0", ICFG)
    fold(state, [e for e in events if e.user_id == "u0"], ICFG, vectors=vectors)
    trend = new_trend("c0", TCFG)
    fold_trend(trend, [*events, ev("w", "brand-new", "c0", T0 + 10**7, w=50.0)], TCFG)
    trending = {"c0": snapshot(trend)}
    cands = generate(state, trending=trending, global_top=(), limit=30)
    assert "brand-new" in {c.item_id for c in cands}
    batch = candidate_batch([state], [cands], [features(state, cands, trending)], vectors.dim)
    scores = scorer.score_candidates(batch)
    assert len(scores) == 1 and scores[0].shape == (len(cands),)
    assert np.all((scores[0] >= 0) & (scores[0] <= 1))
    recs = recommend_batch([state], trending=trending, global_top=(), scorer=scorer, k=5)[0]
    assert 0 < len(recs) <= 5 and all(
        0 <= r.score <= 1 and r.reason in set(RecommendReason) for r in recs
    )
    if not scorer.network_ranking:  # the guard chose the blend for this toy model
        scorer = _Guarded(scorer, True)
        recs = recommend_batch([state], trending=trending, global_top=(), scorer=scorer, k=5)[0]
    want = dict(zip([c.item_id for c in cands], scores[0], strict=True))
    for r in recs:  # scores are the network's, demote aside (u0 bought nothing)
        assert r.score == pytest.approx(float(want[r.item_id]), rel=1e-5) or r.reason == (
            "similar_to_your_interests"
        )


class _Guarded:
    """A scorer whose guard says ``network_ranking``; counts score_candidates calls."""

    def __init__(self, inner, network_ranking: bool) -> None:
        self.inner, self.network_ranking, self.scored = inner, network_ranking, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_candidates(self, batch):
        self.scored += 1
        return self.inner.score_candidates(batch)


def test_guard_ranks_with_the_blend_when_the_network_lost(toy_model) -> None:
    model, events = toy_model
    inner = model.scorer()
    assert isinstance(inner.network_ranking, bool)
    assert inner.network_ranking == model.metrics["ranking"]["use_network"]
    vectors = model.item_vectors(inner.model_version)
    state = new_state("u1", ICFG)
    fold(state, [e for e in events if e.user_id == "u1"], ICFG, vectors=vectors)
    trend = new_trend("c1", TCFG)
    fold_trend(trend, events, TCFG)
    trending = {"c1": snapshot(trend)}
    retrieved = [[Recommended("i0", 0.9, "c0", "similar_to_your_interests")]]
    guarded = _Guarded(inner, False)
    got = recommend_batch(
        [state], trending=trending, global_top=(), scorer=guarded, k=8, retrieved=retrieved
    )[0]
    assert guarded.scored == 0  # the network is not asked
    cands = generate(state, trending=trending, global_top=(), retrieved=retrieved[0])
    parts = components(state, cands, trending, ())
    want = blend(state, cands, parts, 8, "demote")
    assert got == want and "i0" in {c.item_id for c in cands}
    used = _Guarded(inner, True)
    recommend_batch(
        [state], trending=trending, global_top=(), scorer=used, k=8, retrieved=retrieved
    )
    assert used.scored == 1


def test_blend_columns_reproduce_the_blend() -> None:
    trending, top = world()
    state = heavy_user()
    cands = generate(state, trending=trending, global_top=top, limit=50)
    parts = components(state, cands, trending, top)
    f = features_from(parts)
    col = {n: f[:, k] for k, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(col["blend_score"], blend_scores(parts), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        W_OWN * col["blend_own"] + W_CAT * col["blend_cat"] + W_TREND * col["blend_trend"],
        col["blend_score"],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_array_equal(f, features(state, cands, trending, global_top=top))


def test_sequence_items_join_the_union_once_per_batch() -> None:
    """The sequence model's next items join the union (reason next_in_sequence) after the
    user's own and trending items: an item already proposed keeps its first reason, a
    bought one stays out under ``exclude``, and the scorer is asked once per batch."""
    from tests.support.fakes import FakeScorer, FakeVectors

    states = [
        user_state([ev(u, "own", "c1", T0), ev(u, "bought", "c1", T0 + 1, "purchase")])
        for u in ("a", "b")
    ]
    nxt = tuple(
        Recommended(i, 0.5, "c9", RecommendReason.next_in_sequence)
        for i in ("after", "own", "bought")
    )

    class Counting(FakeScorer):
        asked: int = 0

        def next_in_sequence(self, batch):
            self.asked += 1
            assert [len(s) for s in batch.sequences] == [2, 2]
            return super().next_in_sequence(batch)

    vectors = FakeVectors({i: np.ones(4, np.float32) for i in ("own", "after", "bought")})
    scorer = Counting(model_version="1", item_vectors=vectors, next_items=nxt)
    for policy in ("demote", "exclude"):
        scorer.asked = 0
        got = recommend_batch(
            states, trending={}, global_top=[], scorer=scorer, k=50, policy=policy
        )
        assert scorer.asked == 1
        for recs in got:
            reasons = {r.item_id: r.reason for r in recs}
            assert reasons["after"] == RecommendReason.next_in_sequence
            assert reasons["own"] == RecommendReason.your_interest
            assert ("bought" in reasons) == (policy != "exclude")
