"""The data the core passes around, and the two things it needs from a model.

Plain data (frozen dataclasses, small enums) and protocols only: the worker, the offline
evaluation and the model scorers all speak these types, so they live below all of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from stream.core.sequence import RecentEvents


class RejectReason(StrEnum):
    """Why a record was not applied: a metric label and the dead-letter ``reason`` field
    (CONTRACT section 1). Stable codes; ``detail`` carries the human text."""

    invalid_utf8 = "invalid_utf8"  # the value is not UTF-8
    invalid_json = "invalid_json"  # not JSON at all (or an empty / missing value)
    not_object = "not_object"  # JSON, but not an object
    missing_field = "missing_field"  # user_id, item_id or type absent; ts absent, no Kafka ts
    wrong_type = "wrong_type"  # a field has the wrong JSON type (e.g. ts a string or a float)
    id_too_long = "id_too_long"  # an id / category longer than 128 characters
    empty_id = "empty_id"  # an id / category that is the empty string
    unknown_type = "unknown_type"  # event type not in the configured weights or aliases
    too_large = "too_large"  # value longer than max_bytes
    future_ts = "future_ts"  # event time more than max_future_ms ahead of now
    negative_value = "negative_value"  # dwell_ms < 0, quantity < 1, or ts < 0
    beyond_dedup_retention = "beyond_dedup_retention"  # older than the id retention (dedup)
    unprocessable = "unprocessable"  # handling the record failed, retries included


class RecommendReason(StrEnum):
    """Why an item was recommended (the recommendation item's ``reason``, CONTRACT section 3)."""

    your_interest = "your_interest"  # one of the user's own strong items
    trending_in_category = "trending_in_category"  # trending in one of the user's categories
    similar_to_your_interests = "similar_to_your_interests"  # the model's retrieval
    popular = "popular"  # global trending: the fallback for users with little history
    next_in_sequence = "next_in_sequence"  # the sequence model's next items for the user


@dataclass(frozen=True, slots=True)
class Event:
    """One validated user action; ``weight`` already includes the dwell and quantity factors."""

    user_id: str
    item_id: str
    type: str  # canonical type name (aliases resolved, lower case)
    ts: int  # event time, epoch ms
    event_id: str
    category: str | None
    weight: float  # base[type] * dwell_factor * quantity_factor (CONTRACT section 1)
    dwell_ms: int | None = None
    quantity: int | None = None


@dataclass(slots=True)
class EventBatch:
    """The valid events of one fetch as columns: row ``i`` is the ``i``-th valid record.

    The hot path folds these without building an :class:`Event` per record; ``event(i)`` is
    for tests and slow paths.
    """

    rows: np.ndarray  # (n,) int64: each event's position in the fetch's record list
    user_id: list[str]
    item_id: list[str]
    type: list[str]  # canonical type names (aliases resolved, lower case)
    ts: np.ndarray  # (n,) int64 event time, epoch ms
    event_id: list[str]
    category: list[str | None]
    weight: np.ndarray  # (n,) float64: base[type] * dwell_factor * quantity_factor

    def __len__(self) -> int:
        return len(self.user_id)

    def event(self, i: int) -> Event:
        return Event(
            self.user_id[i],
            self.item_id[i],
            self.type[i],
            int(self.ts[i]),
            self.event_id[i],
            self.category[i],
            float(self.weight[i]),
        )

    def take(self, picks: Sequence[int]) -> EventBatch:
        """The events at these positions, in that order."""
        at = np.asarray(picks, np.int64)
        return EventBatch(
            rows=self.rows[at],
            user_id=[self.user_id[i] for i in picks],
            item_id=[self.item_id[i] for i in picks],
            type=[self.type[i] for i in picks],
            ts=self.ts[at],
            event_id=[self.event_id[i] for i in picks],
            category=[self.category[i] for i in picks],
            weight=self.weight[at],
        )

    @classmethod
    def of(cls, events: list[Event], rows: list[int] | None = None) -> EventBatch:
        """Columns of already built events (readers of files, tests)."""
        return cls(
            rows=np.asarray(rows if rows is not None else range(len(events)), np.int64),
            user_id=[e.user_id for e in events],
            item_id=[e.item_id for e in events],
            type=[e.type for e in events],
            ts=np.asarray([e.ts for e in events], np.int64),
            event_id=[e.event_id for e in events],
            category=[e.category for e in events],
            weight=np.asarray([e.weight for e in events], np.float64),
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record was not applied: ``reason`` is a :class:`RejectReason`."""

    reason: str
    detail: str


class Recommended(NamedTuple):
    """One recommended item: ``score`` in [0, 1], ``reason`` a :class:`RecommendReason`.

    (A NamedTuple: a rescoring batch makes k of them per user.)"""

    item_id: str
    score: float
    category: str | None
    reason: str | None = None


class Candidate(NamedTuple):
    """One proposed item: its category and the first source that proposed it.

    (A NamedTuple: a user's rescoring builds up to ``limit`` of them, and a tuple is
    several times cheaper to make than a frozen dataclass.)"""

    item_id: str
    category: str | None
    reason: str


@dataclass(slots=True)
class ScoreBatch:
    """The scorer's retrieval input for a batch of users (stream.core.candidates builds it)."""

    user_ids: list[str]
    vectors: np.ndarray  # (B, 2, d) float32: [short, long]
    categories: list[tuple[dict[str, float], dict[str, float]]]  # per user: (short, long)
    exclude: list[set[str]]  # per user: item ids never to return
    k: int


@dataclass(slots=True)
class CandidateBatch:
    """Users and the candidates to score for each (stream.core.candidates builds it).

    ``features[b]`` is (len(items[b]), F) float32 in stream.core.features.FEATURE_NAMES
    order. Items unknown to the model are scored too, from their features alone.
    """

    user_ids: list[str]
    vectors: np.ndarray  # (B, 2, d) float32: [short, long]
    categories: list[tuple[dict[str, float], dict[str, float]]]  # per user: (short, long)
    items: list[list[str]]
    features: list[np.ndarray]
    # per user, the recent events (a fused model scores the sequence with the candidates)
    sequences: Sequence[RecentEvents] | None = None


@dataclass(slots=True)
class SequenceBatch:
    """Users and their recent events, for the sequence model's next items (one call per
    rescoring batch; the scorer maps ids to its own index)."""

    user_ids: list[str]
    sequences: Sequence[RecentEvents]  # per user, oldest first
    k: int


class ItemVectors(Protocol):
    """What the core needs of a model's item embeddings."""

    version: str
    dim: int

    def get(self, item_id: str) -> np.ndarray | None:
        """The (dim,) embedding of ``item_id``, or None when the model does not know it."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """A model the ranking can call: the in-process SavedModel, TF Serving, or a fake."""

    @property
    def model_version(self) -> str | None: ...

    @property
    def item_vectors(self) -> ItemVectors | None: ...

    @property
    def catalog(self) -> Mapping[str, str]: ...

    @property
    def network_ranking(self) -> bool:
        """The guard: False when the network lost to the blend on its validation window."""
        ...

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]: ...

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]: ...

    def next_in_sequence(self, batch: SequenceBatch) -> list[list[Recommended]]:
        """The sequence model's best next items per user (reason ``next_in_sequence``),
        best first; empty lists when the loaded version has no sequence model."""
        ...

    def refresh(self) -> None:
        """Raise ScorerError when the configured model server cannot be reached.

        Called off the event loop before each rescoring batch, so that an outage keeps the
        users dirty (and counted) instead of silently degrading to the no-model blend.
        """
        ...

    def close(self) -> None: ...
