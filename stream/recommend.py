"""Dirty users -> scorer request -> recommendation messages (CONTRACT section 3).

Pure glue between the interest state and a scorer: no Kafka, no Faust, so the offline
evaluation builds requests and messages with the very same functions as the worker.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.scoring import Recommended, ScoreBatch
from stream.interest import (
    LONG,
    SHORT,
    UserState,
    category_strengths,
    interest_vector,
    top_categories,
)

INTERESTS_PER_HORIZON = 10


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def purchased_items(state: UserState) -> set[str]:
    """Items the user bought: excluded or demoted by the purchased-items policy."""
    return set(state.purchased)


def score_request(
    states: Sequence[UserState], dim: int, k: int, exclude_purchased: bool
) -> ScoreBatch:
    """The scorer's input for a batch of users, every quantity taken at each user's t_ref."""
    vectors = np.zeros((len(states), 2, dim), dtype=np.float32)
    categories: list[tuple[dict[str, float], dict[str, float]]] = []
    exclude: list[set[str]] = []
    for row, state in enumerate(states):
        for horizon in (SHORT, LONG):
            vec = interest_vector(state, horizon)
            if vec is not None and vec.shape[-1] == dim:
                vectors[row, horizon] = vec
        categories.append((category_strengths(state, SHORT), category_strengths(state, LONG)))
        exclude.append(purchased_items(state) if exclude_purchased else set())
    return ScoreBatch(
        user_ids=[s.user_id for s in states],
        vectors=vectors,
        categories=categories,
        exclude=exclude,
        k=k,
    )


def interests(state: UserState) -> dict[str, list[dict[str, Any]]]:
    """Strongest categories per horizon at t_ref, as the message carries them."""
    return {
        name: [
            {"category": cat, "strength": float(value)}
            for cat, value in top_categories(state, horizon, INTERESTS_PER_HORIZON)
        ]
        for name, horizon in (("long", LONG), ("short", SHORT))
    }


def item_entry(rec: Recommended) -> dict[str, Any]:
    entry: dict[str, Any] = {"item_id": rec.item_id, "score": round(float(rec.score), 6)}
    if rec.reason:
        entry["reason"] = rec.reason
    if rec.category is not None:
        entry["category"] = rec.category
    return entry


def build_message(
    state: UserState,
    items: Iterable[Recommended],
    *,
    version: int,
    model_version: str | None,
    generated_at: int | None = None,
) -> dict[str, Any]:
    """One recommendation message exactly as CONTRACT section 3 defines it."""
    return {
        "user_id": state.user_id,
        "version": version,
        "generated_at": generated_at if generated_at is not None else now_ms(),
        "as_of": state.t_ref,
        "model_version": model_version,
        "items": [item_entry(r) for r in items],
        "interests": interests(state),
        "events_applied": state.events_applied,
    }


@dataclass
class DirtyUsers:
    """Users changed since their last publication, per partition, with retry backoff.

    Kept in memory only: what a crash loses is found again from the states themselves
    (a state knows whether it was published since its last applied event).
    """

    base_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    by_partition: dict[int, dict[str, int]] = field(default_factory=dict)
    failures: int = 0
    retry_at: float = 0.0

    def mark(self, partition: int, user_id: str, kafka_ts: int) -> None:
        """Remember the user and the newest Kafka timestamp not yet published."""
        users = self.by_partition.setdefault(partition, {})
        if kafka_ts > users.get(user_id, -1):
            users[user_id] = kafka_ts

    def take(self, partitions: Iterable[int], limit: int) -> list[tuple[int, str, int]]:
        """Remove and return up to ``limit`` users of the given partitions, longest waiting
        first (a user keeps its place in the queue when marked again)."""
        taken: list[tuple[int, str, int]] = []
        for partition in partitions:
            users = self.by_partition.get(partition)
            if users:
                # one scan of the queue's head (popping one by one from the front would make
                # every next(iter(...)) skip the slots already emptied)
                for user_id in list(itertools.islice(users, limit - len(taken))):
                    taken.append((partition, user_id, users.pop(user_id)))
            if len(taken) >= limit:
                break
        return taken

    def give_back(self, taken: Iterable[tuple[int, str, int]]) -> None:
        """Put users back after a failed attempt, keeping any newer timestamp."""
        for partition, user_id, ts in taken:
            self.mark(partition, user_id, ts)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget users of partitions this worker no longer owns (their new owner rescans)."""
        for partition in partitions:
            self.by_partition.pop(partition, None)

    def count(self) -> int:
        return sum(len(u) for u in self.by_partition.values())

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    def failed(self, now: float) -> float:
        """Back off exponentially; return the delay chosen."""
        self.failures += 1
        delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (self.failures - 1))
        self.retry_at = now + delay
        return delay
