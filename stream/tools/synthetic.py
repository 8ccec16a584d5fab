"""A synthetic event stream for the demo, the benchmarks and ``interest evaluate``.

Users have a few favourite categories that drift over time (a session picks one and
sticks to it for a while), items have Zipf-like popularity within their category, and
event types follow a browse-heavy funnel, so interest strengths move as on a real shop.

Sequences carry signal too: every item has a *successor* in its category (the categories'
items in a seeded random cycle, unrelated to popularity), and within a session the event
after one on an item is on that item's successor with probability CHAIN_AFTER[type of the
event before]: more likely after engagement (click, favorite, cart, purchase) than after a
browse, so browse-then-cart-then-buy chains run through the catalogue and a model that
reads a user's recent events in order can predict the next item where counts cannot.
Event types are still drawn from FUNNEL independently, so the type shares are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

FUNNEL = (
    ("browse", 0.80),
    ("click", 0.10),
    ("favorite", 0.04),
    ("add_to_cart", 0.04),
    ("purchase", 0.02),
)
CHAIN_AFTER = {  # P(next event is on the successor | type of the event before), in a session
    "browse": 0.4,
    "click": 0.6,
    "favorite": 0.6,
    "add_to_cart": 0.7,
    "purchase": 0.7,
}
SESSION_BREAK = 0.08  # P(a new session, maybe a new category) before each event


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]
    categories: np.ndarray  # category index per item
    by_category: list[np.ndarray]  # item indices per category
    weights: list[np.ndarray]  # popularity weights within each category (sum 1)
    successor: np.ndarray  # item index -> the item that tends to follow it (same category)

    @classmethod
    def make(cls, rng: np.random.Generator, n_items: int, n_categories: int) -> Catalog:
        categories = rng.integers(0, n_categories, size=n_items)
        by_category = [np.flatnonzero(categories == c) for c in range(n_categories)]
        weights = []
        for members in by_category:
            ranks = np.arange(1, len(members) + 1, dtype=float)
            w = 1.0 / ranks**1.1
            weights.append(w / w.sum() if len(w) else w)
        successor = np.arange(n_items)
        chains = rng.spawn(1)[0]  # a child stream: rng's own draws stay as they were
        for members in by_category:
            cycle = chains.permutation(members)
            successor[cycle] = np.roll(cycle, -1)
        return cls([f"i{n}" for n in range(n_items)], categories, by_category, weights, successor)


def _user_stream(
    rng: np.random.Generator, catalog: Catalog, user: str, n: int, start_ms: int, span_ms: int
) -> Iterator[dict[str, Any]]:
    n_cat = len(catalog.by_category)
    prefs = rng.dirichlet(np.full(n_cat, 0.2))
    ts = start_ms + int(rng.uniform(0, span_ms * 0.2))
    mean_gap = max(1, span_ms // max(n, 1))
    session_cat = int(rng.choice(n_cat, p=prefs))
    types, probs = zip(*FUNNEL, strict=True)
    previous: tuple[int, str] | None = None  # (item, type) of the session's last event
    for _ in range(n):
        if rng.random() < SESSION_BREAK:  # a new session, sometimes a new interest (drift)
            if rng.random() < 0.3:
                prefs = 0.7 * prefs + 0.3 * rng.dirichlet(np.full(n_cat, 0.2))
            session_cat = int(rng.choice(n_cat, p=prefs))
            previous = None
        members = catalog.by_category[session_cat]
        if not len(members):
            continue
        if previous is not None and rng.random() < CHAIN_AFTER[previous[1]]:
            item = int(catalog.successor[previous[0]])
        else:
            item = int(rng.choice(members, p=catalog.weights[session_cat]))
        type_ = str(rng.choice(types, p=probs))
        previous = (item, type_)
        record: dict[str, Any] = {
            "user_id": user,
            "item_id": catalog.item_ids[item],
            "type": type_,
            "ts": ts,
            "category": f"c{session_cat}",
        }
        if type_ in ("browse", "click"):
            record["dwell_ms"] = int(rng.lognormal(9.0, 0.8))
        if type_ in ("add_to_cart", "purchase"):
            record["quantity"] = int(rng.integers(1, 3))
        yield record
        ts += int(rng.exponential(mean_gap))


def generate(
    users: int,
    events: int,
    *,
    seed: int = 7,
    start_ms: int = 1_700_000_000_000,
    span_ms: int = 6 * 3_600_000,
    n_items: int = 2000,
    n_categories: int = 40,
) -> list[dict[str, Any]]:
    """Events of ``users`` users, ``events`` in all (heavy users more), sorted by time."""
    rng = np.random.default_rng(seed)
    catalog = Catalog.make(rng, n_items, n_categories)
    activity = rng.pareto(1.5, size=users) + 1.0
    counts = np.maximum(1, np.round(activity / activity.sum() * events)).astype(int)
    records: list[dict[str, Any]] = []
    for u, n in enumerate(counts):
        records.extend(_user_stream(rng, catalog, f"u{u}", int(n), start_ms, span_ms))
    records.sort(key=lambda r: r["ts"])
    return records[:events]


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for record in records:
            fh.write(orjson.dumps(record) + b"\n")
    return path
