"""Implicit ALS: the objective goes down and a planted block structure comes back."""

from __future__ import annotations

import numpy as np
import pytest

from models.serving.model_dir import OTHER_CATEGORY
from models.training.embeddings import (
    MFConfig,
    build_interactions,
    category_index,
    cosine_matrix,
    factorize,
    from_cells,
)
from stream.core.types import Event


def planted(groups: int = 3, users_per: int = 20, items_per: int = 15, seed: int = 0):
    """Users of group g only touch items of group g: a rank-`groups` preference matrix."""
    rng = np.random.default_rng(seed)
    cells: dict[tuple[int, int], float] = {}
    held: list[tuple[int, int]] = []
    for u in range(groups * users_per):
        g = u % groups
        picks = rng.choice(items_per, 8, replace=False)
        for n, i in enumerate(picks):
            cell = (u, g * items_per + int(i))
            if n == 0:
                held.append(cell)  # held out: never shown to the factorisation
            else:
                cells[cell] = float(rng.integers(1, 6))
    n_items = groups * items_per
    data = from_cells(
        [f"u{u}" for u in range(groups * users_per)],
        [f"i{i}" for i in range(n_items)],
        cells,
        [f"c{i // items_per}" for i in range(n_items)],
    )
    return data, held, np.arange(n_items) // items_per


def test_objective_decreases_monotonically() -> None:
    data, _, _ = planted()
    res = factorize(data, MFConfig(dim=4, iterations=6, reg=0.1), seed=1)
    losses = np.array(res.losses)
    assert res.item_factors.shape == (data.n_items, 4)
    assert res.user_factors.shape == (data.n_users, 4)
    assert np.all(np.diff(losses) <= 1e-3 * losses[:-1]), losses  # ALS: exact half-steps
    assert losses[-1] < 0.5 * losses[0]


def test_recovers_planted_low_rank_structure() -> None:
    data, held, group = planted()
    res = factorize(data, MFConfig(dim=4, iterations=8), seed=2)
    cos = cosine_matrix(res.item_factors)
    same = group[:, None] == group[None, :]
    off_diag = ~np.eye(len(group), dtype=bool)
    assert cos[same & off_diag].mean() > 0.6
    assert abs(cos[~same].mean()) < 0.2
    # held-out in-group cells outrank every user's out-of-group items
    pred = res.user_factors @ res.item_factors.T
    wins = [pred[u, i] > np.max(pred[u, group != group[i]]) for u, i in held]
    assert np.mean(wins) > 0.9


def test_build_interactions_sums_weights_and_keeps_majority_category() -> None:
    def ev(u: str, i: str, w: float, cat: str | None, ts: int) -> Event:
        return Event(u, i, "browse", ts, f"{u}{i}{ts}", cat, w)

    data = build_interactions(
        [
            ev("a", "x", 1.0, "c1", 1),
            ev("a", "x", 8.0, "c1", 2),
            ev("b", "x", 2.0, "c2", 3),
            ev("b", "y", 4.0, None, 4),
        ]
    )
    dense = data.dense()
    assert dense[data.user_index["a"], data.item_index["x"]] == pytest.approx(9.0)
    assert dense[data.user_index["b"], data.item_index["y"]] == pytest.approx(4.0)
    assert data.item_categories[data.item_index["x"]] == "c1"
    assert data.item_categories[data.item_index["y"]] == "__none__"
    assert data.popularity[data.item_index["x"]] == pytest.approx(np.log1p(11.0))
    assert category_index(data.item_categories)[-1] == OTHER_CATEGORY
