"""Which users to rescore when: dirty users per partition, fair turns, retry backoff.

Kept in memory only: what a crash loses is found again from the states themselves (a state
knows whether it was published since its last applied event).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class DirtyUsers:
    """Users changed since their last publication, per partition, with retry backoff."""

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


@dataclass
class RoundBudget:
    """How long one rescoring round may go on.

    Under load a round takes at most ``share`` of each interval: the rest goes to applying
    events, and users that stay dirty meanwhile coalesce more events per publication. While
    no event batch arrives (none since the round started) it goes on, so a backlog drains
    at full speed.
    """

    interval_s: float
    share: float = 0.5

    def go_on(self, now: float, started: float, last_applied: float) -> bool:
        return now < started + self.interval_s * self.share or last_applied < started


@dataclass
class Turns:
    """Rotates the order partitions are served in, so no partition waits behind another."""

    turn: int = 0

    def order(self, partitions: Iterable[int]) -> list[int]:
        ordered = sorted(partitions)
        self.turn = (self.turn + 1) % max(1, len(ordered))
        return ordered[self.turn :] + ordered[: self.turn]
