"""The synthetic stream: deterministic, the funnel's shares, and sequences that carry signal."""

from __future__ import annotations

from collections import Counter

import numpy as np

from stream.tools.synthetic import FUNNEL, Catalog, generate

N_ITEMS, N_CATEGORIES = 600, 20


def successors(seed: int) -> np.ndarray:
    """The catalogue's successor table, rebuilt the way generate builds it."""
    return Catalog.make(np.random.default_rng(seed), N_ITEMS, N_CATEGORIES).successor


def follow_rate(records: list[dict], successor: np.ndarray) -> float:
    """Share of a user's consecutive events whose item is the previous item's successor."""
    last: dict[str, int] = {}
    hits = pairs = 0
    for r in records:
        item = int(r["item_id"][1:])
        if r["user_id"] in last:
            pairs += 1
            hits += int(successor[last[r["user_id"]]] == item)
        last[r["user_id"]] = item
    return hits / pairs


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a = generate(40, 3000, seed=3, n_items=N_ITEMS, n_categories=N_CATEGORIES)
    assert a == generate(40, 3000, seed=3, n_items=N_ITEMS, n_categories=N_CATEGORIES)
    assert a != generate(40, 3000, seed=4, n_items=N_ITEMS, n_categories=N_CATEGORIES)


def test_counts_order_and_funnel_shares() -> None:
    records = generate(200, 20_000, seed=5, n_items=N_ITEMS, n_categories=N_CATEGORIES)
    assert len(records) == 20_000
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert len({r["user_id"] for r in records}) > 150
    shares = Counter(r["type"] for r in records)
    for type_, p in FUNNEL:
        assert abs(shares[type_] / len(records) - p) < 0.01, type_


def test_the_successor_follows_far_above_chance() -> None:
    successor = successors(5)
    cats = Catalog.make(np.random.default_rng(5), N_ITEMS, N_CATEGORIES).categories
    assert (cats[successor] == cats).all()  # a successor is in its item's category
    assert (successor != np.arange(N_ITEMS)).sum() > N_ITEMS - N_CATEGORIES  # a cycle per category
    records = generate(200, 20_000, seed=5, n_items=N_ITEMS, n_categories=N_CATEGORIES)
    chained = follow_rate(records, successor)
    baseline = follow_rate(records, successors(6))  # another catalogue's successors: chance
    assert chained > 0.3
    assert chained > 8 * baseline
