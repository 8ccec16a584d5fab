"""The replay protocol of `interest evaluate`: no method sees a target before ranking it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from models.evaluation.baselines import (
    CategoryPopularity,
    CategoryTrending,
    DecayedCounts,
    Popularity,
    UserItemStrength,
    keep_horizons,
    reweighter,
)
from models.evaluation.evaluate import LeakError, cut_time, is_target, replay, write_tuned_toml
from stream.config import Settings, event_parser, load_settings
from stream.core.interest import InterestConfig, fold, new_state
from stream.core.types import Event

PARSER = event_parser(Settings())
HOUR = 3_600_000


def ev(user: str, item: str, type_: str, ts: int, category: str = "c1") -> Event:
    built = PARSER.build(user_id=user, item_id=item, type=type_, ts=ts, category=category)
    assert isinstance(built, Event)
    return built


def stream() -> list[Event]:
    """Two users; the cut is at 10h. After it: a new-item browse (target), a repeat browse
    (not a target), a cart (target), and a brand-new user's first event (not a target)."""
    return [
        ev("u1", "a", "browse", 1 * HOUR),
        ev("u2", "b", "browse", 2 * HOUR, "c2"),
        ev("u1", "b", "browse", 3 * HOUR, "c2"),
        ev("u1", "new-1", "browse", 11 * HOUR),  # target: new to u1 and to everyone
        ev("u1", "a", "browse", 12 * HOUR),  # repeat browse: not a target
        ev("u2", "b", "cart", 13 * HOUR, "c2"),  # target by type
        ev("u3", "a", "purchase", 14 * HOUR),  # u3 has no earlier event: not a target
    ]


@dataclass
class Recorder:
    """Honest method that logs the order of calls; recommends the user's latest item."""

    name: str = "recorder"
    log: list[tuple[str, str, int]] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        self.log.append(("recommend", user_id, now_ms))
        return [self.last[user_id]] if user_id in self.last else []

    def observe(self, event: Event) -> None:
        self.log.append(("observe", event.user_id, event.ts))
        self.last[event.user_id] = event.item_id


def test_targets_are_ranked_before_they_are_observed() -> None:
    method = Recorder()
    result = replay(stream(), [method], cut_ts=10 * HOUR)
    assert result.times == [11 * HOUR, 13 * HOUR]  # exactly the two targets
    calls = method.log
    for ts in result.times:
        ranked_at = calls.index(("recommend", "u1" if ts == 11 * HOUR else "u2", ts))
        observed_at = next(i for i, c in enumerate(calls) if c[0] == "observe" and c[2] == ts)
        assert ranked_at < observed_at
        # everything observed before ranking is strictly earlier in time
        assert all(c[2] < ts for c in calls[:ranked_at] if c[0] == "observe")
    assert sum(1 for c in calls if c[0] == "observe") == len(stream())  # warm-up included
    assert result.rank_array("recorder").tolist() == [0, 1]  # u2's latest item was b


def test_pre_cut_events_are_never_evaluated() -> None:
    method = Recorder()
    replay(stream(), [method], cut_ts=10 * HOUR)
    assert all(c[2] >= 10 * HOUR for c in method.log if c[0] == "recommend")


class Cursor:
    """The shared "next event" a leaky method peeks at: set as the replay pulls events."""

    current: Event | None = None

    def wrap(self, events: Sequence[Event]) -> Iterator[Event]:
        for e in events:
            self.current = e
            yield e


@dataclass
class Leaky:
    """Deliberately leaky: recommends the item of the event the replay is looking at."""

    cursor: Cursor
    name: str = "leaky"

    def recommend(self, user_id: str, k: int, now_ms: int) -> list[str]:
        assert self.cursor.current is not None
        return [self.cursor.current.item_id]

    def observe(self, event: Event) -> None:
        pass


def test_a_planted_leak_is_caught() -> None:
    cursor = Cursor()
    with pytest.raises(LeakError, match=r"leaky.*new-1.*looked ahead"):
        replay(cursor.wrap(stream()), [Recorder(), Leaky(cursor)], cut_ts=10 * HOUR)


def test_the_leak_check_passes_honest_methods() -> None:
    config = InterestConfig()
    methods = [
        Recorder(),
        Popularity(config.half_life_long_ms),
        CategoryPopularity(config),
        CategoryTrending(config),
        UserItemStrength(config),
    ]
    result = replay(stream(), methods, cut_ts=10 * HOUR)
    assert len(result.ranks) == 2
    assert result.items_seen == 3  # a, b, new-1 (at the end of the replay)


def test_target_rule() -> None:
    history = {"u1": {"a"}}
    everything = frozenset({"click", "favorite", "add_to_cart", "purchase", "browse_new"})
    assert is_target(ev("u1", "x", "browse", 1), history, everything)
    assert not is_target(ev("u1", "a", "browse", 1), history, everything)
    assert is_target(ev("u1", "a", "purchase", 1), history, everything)
    assert not is_target(ev("u9", "x", "purchase", 1), history, everything)  # cold user
    assert not is_target(ev("u1", "x", "browse", 1), history, frozenset({"purchase"}))
    assert is_target(ev("u1", "a", "browse", 1), history, frozenset({"browse"}))


def test_cut_is_a_quantile_not_a_fraction_of_the_span() -> None:
    ts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10**12])  # one outlier far in the future
    assert cut_time(ts, 0.5) == 5
    assert cut_time(ts, 1_500_000_000_000.0) == 1_500_000_000_000
    with pytest.raises(ValueError, match="--cut"):
        cut_time(ts, 0.0)


def test_decayed_counts_rank_by_decayed_weight_and_survive_reanchoring() -> None:
    counts = DecayedCounts(half_life_ms=HOUR)
    counts.add("old", 4.0, 0)  # worth 4 * 2**-3 = 0.5 at 3h
    counts.add("new", 1.0, 3 * HOUR)
    assert counts.top(2) == ["new", "old"]
    counts.add("later", 1.0, 1000 * HOUR)  # exponent 1000 > 500: re-anchored, no overflow
    assert counts.top(1) == ["later"]
    assert np.isfinite(counts.values).all()


def test_horizon_ablation_zeroes_one_horizon() -> None:
    state = new_state("u1")
    fold(state, [ev("u1", "a", "click", HOUR)], InterestConfig())
    short_only = keep_horizons(state, (True, False))
    assert short_only.categories["c1"] == [2.0, 0.0] and short_only.items["a"] == [2.0, 0.0]
    assert state.categories["c1"] == [2.0, 2.0]  # the original is untouched


def test_reweighting_keeps_dwell_factor() -> None:
    parser = event_parser(Settings())
    e = parser.build(user_id="u", item_id="i", type="click", ts=1, dwell_ms=20_000)
    assert isinstance(e, Event) and e.weight == 4.0  # 2 * dwell factor 2
    assert reweighter({"click": 2.0}, {"click": 5.0})(e).weight == 10.0


def test_tuned_toml_loads_as_settings(tmp_path) -> None:
    path = tmp_path / "tuned.toml"
    weights = {"browse": 1.0, "click": 2.5, "favorite": 3.0, "add_to_cart": 6.0, "purchase": 9.0}
    overrides = {"half_life_short_ms": 600_000, "half_life_long_ms": 86_400_000}
    write_tuned_toml(path, Settings(), overrides | {"event_weights": weights})
    loaded = load_settings(path)
    assert loaded.half_life_short_ms == 600_000 and loaded.half_life_long_ms == 86_400_000
    assert loaded.event_weights == weights
