"""A user's most recent events, in event-time order: the input of the sequence model.

Each state keeps the last ``length`` applied events (event time, item id, event type),
ascending by the total order key ``(ts, item, type)``. The key is total on the content, so
what is kept never depends on arrival order or on how events were batched: the kept events
are exactly the ``length`` greatest (under the key) of all the events ever applied, because
"the k greatest" composes (the k greatest of ``A + B`` are the k greatest of the k greatest
of ``A`` plus ``B``). A late event is therefore inserted in its place, and an event older
than the oldest kept one of a full sequence is not kept (the strengths still count it: it
is only the sequence that is bounded). Two distinct events with the same key (same time,
item and type, different event ids) are both kept: they are indistinguishable here.

Duplicates and replays never get here: the fold inserts only the events it applies
(stream.core.interest.fold_batch, after stream.core.dedup and the state's offsets).

The columns are parallel Python lists rather than arrays: a fold appends a few events per
user and the codec writes them through C-level ``map``/``bytes`` calls, both cheaper on
lists at 50 elements than numpy round trips. :func:`sequence_columns` turns a batch of
users' sequences into the int32 arrays a model scorer feeds its sequence signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from operator import itemgetter

import numpy as np

__all__ = ["PAD", "RecentEvents", "sequence_columns"]

PAD = -1  # the id of an empty slot and of an item or type the model does not know

Key = tuple[int, str, str]  # (ts, item, type): the order the sequence is kept in


class RecentEvents:
    """The last events of one user, oldest first, as parallel columns.

    ``ts[k]``, ``item[k]`` and ``type[k]`` are the k-th kept event, ascending by
    ``(ts, item, type)``. Mutated in place by the fold (:meth:`add`); copied for readers in
    other threads (:meth:`copy`, as UserState.snapshot does).
    """

    __slots__ = ("item", "ts", "type")

    def __init__(
        self,
        ts: list[int] | None = None,
        item: list[str] | None = None,
        type: list[str] | None = None,  # the column's name, as in EventBatch
    ) -> None:
        self.ts: list[int] = ts if ts is not None else []
        self.item: list[str] = item if item is not None else []
        self.type: list[str] = type if type is not None else []

    def __len__(self) -> int:
        return len(self.ts)

    def __eq__(self, other: object) -> bool:
        """Exact equality of the three columns (round-trip and order-independence tests)."""
        if not isinstance(other, RecentEvents):
            return NotImplemented
        return self.ts == other.ts and self.item == other.item and self.type == other.type

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecentEvents({self.events()!r})"

    def events(self) -> list[Key]:
        """The kept events as ``(ts, item, type)`` tuples, oldest first."""
        return list(zip(self.ts, self.item, self.type, strict=True))

    def copy(self) -> RecentEvents:
        """A copy whose lists are its own (folds mutate the lists in place)."""
        return RecentEvents(self.ts.copy(), self.item.copy(), self.type.copy())

    def clear(self) -> None:
        self.ts.clear()
        self.item.clear()
        self.type.clear()

    def trim(self, length: int) -> None:
        """Keep only the newest ``length`` events (a setting lowered since they were kept)."""
        excess = len(self.ts) - max(length, 0)
        if excess > 0:
            del self.ts[:excess]
            del self.item[:excess]
            del self.type[:excess]

    def insert(self, ts: int, item: str, type: str, length: int) -> bool:
        """:meth:`add` of one event, keeping at most ``length``; True when it is kept (an
        event not greater than the smallest kept one of a full sequence is not: keeping it
        and dropping the smallest would keep the same content)."""
        if length <= 0:
            self.clear()
            return False
        self.trim(length)
        key = (ts, item, type)
        if len(self.ts) >= length and key <= (self.ts[0], self.item[0], self.type[0]):
            return False
        self.add([key], length)
        return True

    def add(self, events: list[Key], length: int) -> None:
        """Apply a batch of one user's events (the fold's entry point), keeping at most
        ``length``; ``events`` is sorted in place.

        The usual batch is newer than everything kept: it is sorted and appended, and the
        oldest are cut off. A batch with a late event is merged with what is kept by one
        sort (two sorted runs: a linear merge) and cut to ``length``. Either way the result
        is the ``length`` greatest of what was kept and the batch."""
        if length <= 0:
            self.clear()
            return
        if not events:
            self.trim(length)
            return
        events.sort()
        tss, items, types = self.ts, self.item, self.type
        if tss and events[0] < (tss[-1], items[-1], types[-1]):
            merged = self.events()
            merged += events
            merged.sort()
            if len(merged) > length:
                del merged[: len(merged) - length]
            ts, item, type_ = zip(*merged, strict=True)
            tss[:] = ts
            items[:] = item
            types[:] = type_
            return
        if len(events) > length:
            del events[: len(events) - length]
        ts, item, type_ = zip(*events, strict=True)
        tss += ts
        items += item
        types += type_
        self.trim(length)


def sequence_columns(
    states_sequences: Sequence[RecentEvents],
    item_index: Mapping[str, int],
    type_index: Mapping[str, int],
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(items, types)``: int32 arrays of shape ``(B, length)`` for B users' sequences.

    Right-aligned, the newest event in the last column and PAD (-1) in front of a sequence
    shorter than ``length``; a longer one gives its newest ``length`` events. An item or
    type missing from its index is PAD too. This is what a scorer sends to the model's
    sequence signature, once per rescoring batch (~256 users x 50 events): the ids of all
    users are looked up by one C-level ``map`` over one flat list and scattered into the
    arrays by one numpy assignment; only the slicing is per user."""
    b = len(states_sequences)
    length = max(length, 0)
    items = np.full((b, length), PAD, np.int32)
    types = np.full((b, length), PAD, np.int32)
    if not b or not length:
        return items, types
    counts = [min(len(s.ts), length) for s in states_sequences]
    total = sum(counts)
    if not total:
        return items, types
    kept = [(s, n) for s, n in zip(states_sequences, counts, strict=True) if n]
    flat_items = list(chain.from_iterable(s.item[-n:] for s, n in kept))
    flat_types = list(chain.from_iterable(s.type[-n:] for s, n in kept))
    n_arr = np.array(counts, np.int64)
    first = np.arange(1, b + 1, dtype=np.int64) * length - n_arr  # flat slot of row's oldest
    before = np.cumsum(n_arr) - n_arr  # events of the rows above, in the flat lists
    at = np.arange(total, dtype=np.int64) + np.repeat(first - before, n_arr)
    items.reshape(-1)[at] = _ids(item_index, flat_items)
    try:  # a handful of types, all known as a rule: one itemgetter, twice as fast
        type_ids = list(itemgetter(*flat_types)(type_index)) if total > 1 else None
    except KeyError:
        type_ids = None
    types.reshape(-1)[at] = _ids(type_index, flat_types) if type_ids is None else type_ids
    return items, types


def _ids(index: Mapping[str, int], names: list[str]) -> np.ndarray:
    """``index.get(name, PAD)`` for every name, by one C-level ``map``."""
    n = len(names)
    return np.fromiter(map(index.get, names, repeat(PAD, n)), np.int64, n)
