"""Exponential decay arithmetic shared by the user state and the trending aggregation.

Both keep sums of decayed event weights *scaled to* a reference time ``t_ref`` (the newest
event time applied): ``S(t) = S(t_ref) * 2**(-(t - t_ref)/H)``. Because decay composes, a
batch moves ``t_ref`` once with one rescale, a late event adds its already-decayed weight,
and any arrival order gives the formula's numbers (CONTRACT section 2). The functions here
are that arithmetic once, for both aggregations, over a whole batch of groups (users or
categories) at a time: :func:`decayed_batch` computes every event's decayed weight and every
group's rescale factor with one call per horizon, :func:`accumulate` applies them to every
group's :class:`Sums` with one multiply and one grouped sum.

Values at rest are float32 ``[short, long]`` pairs; a fold computes in float64 and rounds
once at its end, so what is in memory is exactly what is on disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

SHORT, LONG = 0, 1
HORIZONS = (SHORT, LONG)
DEFAULT_HALF_LIVES = (1_800_000, 604_800_000)  # 30 minutes, 7 days
NO_TIME = np.iinfo(np.int64).min  # the reference time of a group without events
_EMPTY = np.zeros((0, 2), np.float32)


def starts(sizes: np.ndarray) -> np.ndarray:
    """Offsets of consecutive groups of these sizes (one more than the groups: the end)."""
    start = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=start[1:])
    return start


def read_factor(t_ref: int | None, half_life: int, t: int | None) -> float:
    """Factor taking sums scaled to t_ref to a read time t; t before t_ref reads at t_ref.

    A view shared by many readers (a trending snapshot) cannot remove events it holds when
    read "before" its own t_ref, so it is read as it stands.
    """
    if t is None or t_ref is None or t <= t_ref:
        return 1.0
    return 2.0 ** (-(t - t_ref) / half_life)


def decayed_batch(
    t_old: np.ndarray, group: np.ndarray, ts: np.ndarray, weight: np.ndarray, half: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arithmetic of one fold of many groups at once.

    ``t_old[g]`` is group g's t_ref (NO_TIME: none yet), ``group[i]``/``ts[i]``/``weight[i]``
    event i's group, time and weight, ``half[g]`` the group's (short, long) half-lives.
    Returns each group's new t_ref (the newest of t_old and its events), each event's
    [short, long] weight decayed to its group's new t_ref, and each group's rescale factors
    from the old t_ref to the new one."""
    t_new = t_old.copy()
    np.maximum.at(t_new, group, ts)
    age = (t_new[group] - ts).astype(np.float64)
    adds = np.stack([weight, weight], axis=1).astype(np.float64)
    aged = age != 0  # an event at t_new adds its weight as it is
    adds[aged] *= np.exp2(-age[aged, None] / half[group[aged]])
    factors = np.ones((len(t_old), 2), np.float64)
    moved = (t_old != NO_TIME) & (t_new != t_old)
    factors[moved] = np.exp2(-(t_new - t_old)[moved, None] / half[moved])
    return t_new, adds, factors


class Sums(Mapping[str, list[float]]):
    """Keys -> [short, long] sums scaled to t_ref: a key column and a (n, 2) float32 array.

    The arrays are what the folds and the ranking use; the Mapping view (values as lists of
    Python floats) serves readers that want one key at a time. ``raw`` keeps each key's
    UTF-8 bytes so that encoding is a join, not an encode per key.
    """

    __slots__ = ("_index", "ids", "ids_gen", "keys_", "raw", "vals")

    def __init__(
        self,
        keys: list[str] | None = None,
        vals: np.ndarray | None = None,
        raw: list[bytes] | None = None,
    ) -> None:
        self.keys_: list[str] = keys if keys is not None else []
        self.vals: np.ndarray = vals if vals is not None else _EMPTY
        self.raw: list[bytes] = raw if raw is not None else [k.encode() for k in self.keys_]
        self._index: dict[str, int] | None = None
        # interned ids of the keys (stream.core.vocab), filled and checked by the ranking
        self.ids: list[int] | None = None
        self.ids_gen: tuple[int, int] | None = None

    # -- the Mapping view
    def __getitem__(self, key: str) -> list[float]:
        return self.vals[self.index[key]].tolist()

    def __len__(self) -> int:
        return len(self.keys_)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"

    @property
    def index(self) -> dict[str, int]:
        """key -> row, built on first use and kept up to date by the folds."""
        if self._index is None:
            self._index = {k: n for n, k in enumerate(self.keys_)}
        return self._index

    def add_key(self, key: str) -> int:
        """Append a key (its values are added by the caller); returns its row."""
        row = len(self.keys_)
        self.index[key] = row
        self.keys_.append(key)
        self.raw.append(key.encode())
        return row

    def copy(self) -> Sums:
        """A copy whose lists are its own; the arrays are shared, because folds replace
        them and never write into them (so a reader in another thread sees a still table)."""
        other = object.__new__(type(self))
        other._copy_from(self)
        return other

    def _copy_from(self, source: Sums) -> None:
        self.keys_ = source.keys_.copy()
        self.raw = source.raw.copy()
        self.vals = source.vals
        self._index = None
        self.ids = None if source.ids is None else source.ids.copy()
        self.ids_gen = source.ids_gen

    def adopt_ids(self, copy: Sums) -> None:
        """Take the interned ids a ranking filled in on ``copy`` (made by :meth:`copy`),
        if they still describe these keys."""
        ids = copy.ids
        if (
            ids is not None
            and ids is not self.ids
            and self.keys_[: len(ids)] == copy.keys_[: len(ids)]
        ):
            self.ids, self.ids_gen = ids, copy.ids_gen

    def keep(self, rows: np.ndarray) -> None:
        """Keep only these rows (ascending), in their order."""
        sel = rows.tolist()
        ids = self.ids
        if ids is not None:  # ids may lag behind the keys (filled lazily): then start over
            self.ids = [ids[n] for n in sel] if len(ids) == len(self.keys_) else None
        self.keys_ = [self.keys_[n] for n in sel]
        self.raw = [self.raw[n] for n in sel]
        self.vals = self.vals[rows]
        self._index = None


def accumulate(
    tables: Sequence[Sums],
    touched: np.ndarray,
    group: np.ndarray,
    rows: np.ndarray,
    adds: np.ndarray,
    factors: np.ndarray,
) -> None:
    """tables = round32(tables * their group's factor + the adds of their rows), at once.

    ``tables[n]`` belongs to group ``touched[n]``; event i adds ``adds[i]`` to row
    ``rows[i]`` (-1: nothing) of its group's table. All the tables' rows go into one float64
    array (new keys as zero rows), which is rescaled by one multiply and summed into by one
    grouped sum per horizon, then rounded and cut back into per-table arrays."""
    sizes = np.array([len(t.keys_) for t in tables], np.int64)
    start = starts(sizes)
    pieces: list[np.ndarray] = []
    for t, size in zip(tables, sizes.tolist(), strict=True):
        pieces.append(t.vals)
        grown = size - len(t.vals)
        if grown:
            pieces.append(np.zeros((grown, 2), np.float32))
    big = np.concatenate(pieces).astype(np.float64) if pieces else np.zeros((0, 2))
    big *= np.repeat(factors[touched], sizes, axis=0)
    slot = np.full(len(factors), -1, np.int64)
    slot[touched] = np.arange(len(touched))
    ok = rows >= 0
    at = start[slot[group[ok]]] + rows[ok]
    total = len(big)
    big[:, SHORT] += np.bincount(at, weights=adds[ok, SHORT], minlength=total)
    big[:, LONG] += np.bincount(at, weights=adds[ok, LONG], minlength=total)
    small = big.astype(np.float32)
    for n, t in enumerate(tables):
        t.vals = small[start[n] : start[n + 1]].copy()  # a copy: no table pins the batch


def strongest_rows(table: Sums, n: int) -> np.ndarray:
    """Rows of the n largest long-horizon sums (ties: the larger key), ascending.

    Everything is scaled to the same t_ref, so this ranks exactly as the strengths at any
    time, and the survivors do not depend on arrival order."""
    long = table.vals[:, LONG]
    if n <= 0:
        return np.zeros(0, np.int64)
    if n >= len(long):
        return np.arange(len(long))
    kth = np.partition(long, len(long) - n)[len(long) - n]
    above = np.flatnonzero(long > kth)
    tied = np.flatnonzero(long == kth).tolist()
    need = n - len(above)
    if need < len(tied):
        keys = table.keys_
        tied = sorted(tied, key=lambda r: keys[r], reverse=True)[:need]
    return np.sort(np.concatenate([above, np.asarray(tied, np.int64)]))
