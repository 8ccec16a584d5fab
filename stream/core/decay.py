"""Exponential decay arithmetic shared by the user state and the trending aggregation.

Both keep sums of decayed event weights *scaled to* a reference time ``t_ref`` (the newest
event time applied): ``S(t) = S(t_ref) * 2**(-(t - t_ref)/H)``. Because decay composes, a
batch moves ``t_ref`` once with one rescale, a late event adds its already-decayed weight,
and any arrival order gives the formula's numbers (CONTRACT section 2). The functions
here are that arithmetic once, for both aggregations.

Values at rest are float32 ``[short, long]`` pairs; a fold computes in float64 and rounds
once at its end, so what is in memory is exactly what is on disk.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable

SHORT, LONG = 0, 1
HORIZONS = (SHORT, LONG)
DEFAULT_HALF_LIVES = (1_800_000, 604_800_000)  # 30 minutes, 7 days

Pair = list[float]  # [short, long]


def round32(values: list[float]) -> list[float]:
    """Round Python floats to the nearest float32 (what the state stores at rest)."""
    return array("f", values).tolist()


def rescale_factors(
    t_ref: int | None, t_new: int, half_lives: tuple[int, int]
) -> tuple[float, float]:
    """(short, long) factors moving sums scaled to ``t_ref`` forward to ``t_new >= t_ref``."""
    if t_ref is None or t_ref == t_new:
        return 1.0, 1.0
    dt = t_new - t_ref
    return 2.0 ** (-dt / half_lives[SHORT]), 2.0 ** (-dt / half_lives[LONG])


def read_factor(t_ref: int | None, half_life: int, t: int | None) -> float:
    """Factor taking sums scaled to t_ref to a read time t; t before t_ref reads at t_ref.

    A view shared by many readers (a trending snapshot) cannot remove events it holds when
    read "before" its own t_ref, so it is read as it stands.
    """
    if t is None or t_ref is None or t <= t_ref:
        return 1.0
    return 2.0 ** (-(t - t_ref) / half_life)


def newest(t_ref: int | None, times: Iterable[int]) -> int:
    """The reference time after a batch: max of ``t_ref`` and the batch's event times."""
    t_new = max(times)
    return t_new if t_ref is None or t_new > t_ref else t_ref


def decayed(weight: float, age: int, half_lives: tuple[int, int]) -> tuple[float, float]:
    """(short, long) contribution at t_new of an event ``age`` ms older than t_new."""
    if not age:
        return weight, weight
    return weight * 2.0 ** (-age / half_lives[SHORT]), weight * 2.0 ** (-age / half_lives[LONG])


def add_pair(acc: dict[str, Pair], key: str, a: float, b: float) -> None:
    """acc[key] += [a, b] (a new key starts at [a, b])."""
    pair = acc.get(key)
    if pair is None:
        acc[key] = [a, b]
    else:
        pair[0] += a
        pair[1] += b


def merge(kept: dict[str, Pair], adds: dict[str, Pair], fs: float, fl: float) -> None:
    """kept = round32(kept * factor + adds); only the added keys when t_ref did not move."""
    if fs == 1.0 and fl == 1.0:
        for k, add in adds.items():
            v = kept.get(k)
            kept[k] = round32(add if v is None else [v[0] + add[0], v[1] + add[1]])
        return
    # the rescale touches every kept entry; one float32 rounding pass over all of them
    # (a plain loop: cheaper than numpy's conversions at these sizes, same IEEE operations)
    flat: list[float] = []
    put = flat.extend
    add_of = adds.get
    for k, v in kept.items():
        a = add_of(k)
        put((v[0] * fs, v[1] * fl) if a is None else (v[0] * fs + a[0], v[1] * fl + a[1]))
    keys = list(kept)
    for k, a in adds.items():
        if k not in kept:
            keys.append(k)
            put((a[0], a[1]))
    rounded = array("f", flat).tolist()
    kept.clear()
    kept.update(zip(keys, (rounded[i : i + 2] for i in range(0, len(rounded), 2)), strict=True))


def strongest(kept: dict[str, Pair], n: int) -> dict[str, Pair]:
    """The n entries with the largest long-horizon value (ties: by key), as a new dict.

    Everything is scaled to the same t_ref, so this ranks exactly as the strengths at any
    time, and the survivors do not depend on arrival order.
    """
    best = heapq.nlargest(n, kept.items(), key=lambda kv: (kv[1][LONG], kv[0]))
    return dict(best)
