"""Real data: 114 Taobao users, folded in shuffled batches, against a plain double loop."""

from __future__ import annotations

import csv
import random
from collections import defaultdict

import pytest

from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS
from stream.core.events import EventParser
from stream.core.interest import LONG, SHORT, InterestConfig, category_strengths, fold, new_state
from stream.core.types import Event
from tests.support.helpers import SHARED_DATA

DATA = SHARED_DATA / "taobao_userbehavior_114users" / "UserBehavior.csv"
CFG = InterestConfig(max_categories=4096, max_items=100_000)
NOW = 2_000_000_000_000


def load_events() -> dict[str, list[Event]]:
    """Every row through the real parser (Taobao seconds -> ms, pv/cart/fav/buy aliases)."""
    parser = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES)
    users: dict[str, list[Event]] = defaultdict(list)
    with DATA.open(newline="") as fh:
        for user, item, cat, behavior, ts in csv.reader(fh):
            e = parser.build(
                user_id=user,
                item_id=item,
                type=behavior,
                ts=int(ts) * 1000,
                category=cat,
                now_ms=NOW,
            )
            assert isinstance(e, Event), e
            users[user].append(e)
    return users


def reference(events: list[Event], half_life: int, t: int) -> dict[str, float]:
    """The contract formula, summed in the most obvious way (one loop per category)."""
    out: dict[str, float] = {}
    for c in {e.category for e in events}:
        total = 0.0
        for e in events:
            if e.category == c:
                total += e.weight * 2.0 ** (-(t - e.ts) / half_life)
        out[c] = total
    return out


@pytest.mark.skipif(not DATA.exists(), reason=f"real-data sample not present at {DATA}")
def test_taobao_users_match_formula_in_any_order() -> None:
    users = load_events()
    assert len(users) == 114
    rnd = random.Random(42)
    worst = 0.0
    for user, events in users.items():
        shuffled = list(events)
        rnd.shuffle(shuffled)
        state = new_state(user)
        cuts = sorted(rnd.sample(range(1, len(shuffled)), k=min(4, len(shuffled) - 1)))
        for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True):
            fold(state, shuffled[a:b], CFG)
        events = list({e.event_id: e for e in events}.values())  # exact repeats count once
        t_ref = max(e.ts for e in events)
        assert state.t_ref == t_ref
        assert state.events_applied == len({e.event_id for e in events})
        for horizon, h in ((SHORT, CFG.half_life_short_ms), (LONG, CFG.half_life_long_ms)):
            got = category_strengths(state, horizon)
            want = reference(events, h, t_ref)
            assert set(got) == set(want)
            for c, w in want.items():
                # all weights are positive here, so a plain relative error is meaningful;
                # short-horizon sums decayed below 1e-30 are compared absolutely
                err = abs(got[c] - w) / w if w > 1e-30 else abs(got[c] - w)
                worst = max(worst, err)
                assert err < 1e-4, (user, c, horizon, got[c], w)
    assert worst < 1e-6  # float32 at rest, float64 in the fold: far inside the contract
