"""Where a rescoring batch is ranked: in a thread of the worker, or in a process of its own.

Ranking is numpy over ``[users x candidates]`` arrays, but with a few hundred users per
batch most of its time is Python between numpy calls, so a ranking thread holds the GIL
the event loop needs for folding. :class:`ProcessRanking` (the default,
``INTEREST_RANKING=process``) runs the ranking in a child process on the other core: the
event loop encodes the batch's states (the bytes the state table holds), the child decodes
them, ranks them with its own scorer and its own view of the trending snapshots, and sends
back each user's items and interests already serialised as JSON, which the publisher
embeds in the message as they are. :class:`ThreadRanking` ranks snapshots of the states
in the worker's scorer thread (``INTEREST_RANKING=thread``; the tests' fakes use it).

Either way the event loop hands over an immutable copy taken in one go (snapshots or
bytes), so the folds that go on meanwhile never show half-way in a ranking, and the message
describes the state that was ranked.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from stream.core.candidates import Ranked, rank_batch
from stream.core.codec import decode, encode
from stream.core.errors import ScorerError
from stream.core.interest import UserState
from stream.core.types import Scorer

log = logging.getLogger("interest.ranking")

Trending = tuple[Mapping[str, Any], Sequence[tuple[str, str | None, float]]]


class RankedBatch(Protocol):
    """One ranked batch as the publisher reads it (user ``b`` of the batch)."""

    model_version: str | None

    def items_of(self, b: int) -> Any:
        """The message's ``items`` (a list, or an ``orjson.Fragment`` of one)."""
        ...

    def interests_of(self, b: int) -> Any:
        """The message's ``interests`` (a dict, or an ``orjson.Fragment`` of one)."""
        ...


class Ranking(Protocol):
    """``prepare`` runs on the event loop, the call in the scorer thread. A batch holds
    cached states and, for users read from the table only to be ranked, their bytes."""

    def prepare(self, states: list[UserState | bytes]) -> Any: ...

    def ready(self) -> bool:
        """Whether a call can start now (a ranking process may still be loading its model:
        its start-up is not the scorer's time to answer). Never blocks."""
        ...

    def __call__(self, prepared: Any) -> RankedBatch: ...

    def settle(self, states: list[UserState | bytes], prepared: Any) -> None:
        """After a successful call, on the event loop: keep what the ranking learnt."""
        ...

    def abort(self) -> None:
        """A call timed out: free the thread it holds, if that can be done."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RankOptions:
    """The settings a ranking needs (INTEREST_TOP_K, _PURCHASED_POLICY, _CANDIDATE_LIMIT)."""

    k: int
    policy: str
    limit: int


# --------------------------------------------------------------------------- in a thread


@dataclass(slots=True)
class LocalRanked:
    """A :class:`Ranked` in the publisher's terms."""

    ranked: Ranked
    model_version: str | None

    def items_of(self, b: int) -> Any:
        return self.ranked.entries(b)

    def interests_of(self, b: int) -> Any:
        return self.ranked.interests[b]


class ThreadRanking:
    """Ranks snapshots of the states with ``scorer`` over the live trending view."""

    def __init__(
        self, scorer: Scorer, trending: Callable[[], Trending], options: RankOptions
    ) -> None:
        self.scorer = scorer
        self.trending = trending
        self.options = options

    def prepare(self, states: list[UserState | bytes]) -> list[UserState]:
        return [decode(s) if isinstance(s, bytes) else s.snapshot() for s in states]

    def ready(self) -> bool:
        return True

    def __call__(self, prepared: list[UserState]) -> LocalRanked:
        self.scorer.refresh()  # may do network I/O (TF Serving status): in the thread
        version = self.scorer.model_version
        return LocalRanked(_rank(prepared, self.scorer, self.trending(), self.options), version)

    def settle(self, states: list[UserState | bytes], prepared: list[UserState]) -> None:
        for state, snapshot in zip(states, prepared, strict=True):
            if not isinstance(state, bytes):
                state.items.adopt_ids(snapshot.items)  # the interned ids, if still good

    def abort(self) -> None:
        pass  # a thread cannot be stopped: the rescorer waits for it

    def close(self) -> None:
        pass


def _rank(
    states: list[UserState], scorer: Scorer | None, trending: Trending, options: RankOptions
) -> Ranked:
    view, top = trending
    return rank_batch(
        states,
        trending=view,
        global_top=top,
        scorer=scorer,
        k=options.k,
        policy=options.policy,
        limit=options.limit,
    )


# --------------------------------------------------------------------------- in a process


@dataclass(slots=True)
class RemoteRanked:
    """A batch ranked by the child: per user, items and interests as JSON bytes."""

    items: list[bytes]
    interests: list[bytes]
    model_version: str | None

    def items_of(self, b: int) -> Any:
        return orjson.Fragment(self.items[b])

    def interests_of(self, b: int) -> Any:
        return orjson.Fragment(self.interests[b])


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """What the child needs to rank as the worker would (picklable: the child is spawned).

    ``open_scorer`` and ``follow`` are module-level functions called in the child with
    ``scorer_args`` and ``follow_args``; ``follow`` returns a started
    stream.worker.trends.TrendingFollower (or anything with ``current()`` and ``stop()``),
    or None for no trending."""

    options: RankOptions
    open_scorer: Callable[..., Scorer]
    scorer_args: dict[str, Any]
    follow: Callable[..., Any] | None
    follow_args: tuple[Any, ...]
    log_level: str = "INFO"


def serve(conn: Any, spec: ChildSpec) -> None:
    """The child's loop: encoded states in, serialised rankings out, until the pipe closes
    (the worker stopped or died) or None arrives."""
    # Ctrl-C and SIGTERM (to the worker's process group) are the worker's to handle: it
    # sends None (or closes the pipe) once it has stopped using the ranking
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s[ranking]: %(message)s"
    )
    scorer = spec.open_scorer(**spec.scorer_args)
    follower = spec.follow(*spec.follow_args) if spec.follow is not None else None
    conn.send(("ready", None))
    try:
        while True:
            try:
                blobs = conn.recv()
            except (EOFError, OSError):
                break
            if blobs is None:
                break
            try:
                scorer.refresh()
                version = scorer.model_version
                trending = follower.current() if follower is not None else ({}, [])
                ranked = _rank([decode(b) for b in blobs], scorer, trending, spec.options)
                dumps = orjson.dumps
                items = [dumps(ranked.entries(b)) for b in range(len(blobs))]
                interests = [dumps(i) for i in ranked.interests]
                reply: tuple[str, Any] = ("ok", (items, interests, version))
            except Exception as exc:  # the worker counts it and keeps the users dirty
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except (EOFError, OSError):
                break
    finally:
        if follower is not None:
            follower.stop()
        scorer.close()


class _Child:
    """One ranking process: started on demand, restarted after it died or was killed."""

    def __init__(self, spec: ChildSpec, ctx: Any, start_timeout_s: float, name: str) -> None:
        self.spec = spec
        self.ctx = ctx
        self.start_timeout_s = start_timeout_s
        self.name = name
        self.proc: Any = None
        self.conn: Any = None
        self.ready = False
        self.started_at = 0.0
        self.not_ready = ""  # why poll_ready last said no

    def ensure_started(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            return
        self.stop()
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=serve, args=(child, self.spec), name=self.name, daemon=True)
        proc.start()
        child.close()
        self.proc, self.conn, self.ready = proc, parent, False
        self.started_at = time.monotonic()

    def poll_ready(self, wait_s: float = 0.0) -> bool:
        """Whether the process has said it is ready (its scorer open, the model loaded),
        waiting at most ``wait_s``; starts it when it is not running, restarts it when it
        did not get ready within the start timeout. ``not_ready`` says why not."""
        if self.ready and self.proc is not None and self.proc.is_alive():
            return True
        try:
            self.ensure_started()
            if not self.conn.poll(wait_s):
                self.not_ready = f"it did not start in {self.start_timeout_s:.0f}s"
                if time.monotonic() - self.started_at > self.start_timeout_s:
                    log.warning("the ranking process did not start: restarting it")
                    self.stop()
                return False
            kind, _ = self.conn.recv()
        except (EOFError, OSError) as exc:
            code = self.proc.exitcode if self.proc is not None else None
            self.not_ready = f"it stopped at start (exit code {code}): {exc}"
            self.stop()
            return False
        if kind != "ready":
            self.not_ready = f"it said {kind!r} at start"
            log.warning("the ranking process said %r at start: restarting it", kind)
            self.stop()
            return False
        self.ready = True
        return True

    def send(self, blobs: list[bytes]) -> None:
        """Hand over a batch, first waiting (up to the start timeout) for a starting child."""
        if not self.poll_ready(self.start_timeout_s):
            raise ScorerError(f"the ranking process is not ready: {self.not_ready}")
        try:
            self.conn.send(blobs)
        except (EOFError, OSError) as exc:
            raise self._died(exc) from exc

    def receive(self) -> tuple[str, Any]:
        try:
            reply: tuple[str, Any] = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died(exc) from exc
        return reply

    def _died(self, exc: BaseException) -> ScorerError:
        code = self.proc.exitcode if self.proc is not None else None
        self.stop()
        return ScorerError(f"the ranking process stopped (exit code {code}): {exc}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
        self.proc = self.conn = None
        self.ready = False

    def close(self) -> None:
        """Ask the process to stop (it closes its scorer), then make sure it did."""
        if self.proc is None or self.conn is None:
            return
        with contextlib.suppress(EOFError, OSError):
            self.conn.send(None)
        self.proc.join(10)
        self.stop()


class ProcessRanking:
    """Ranks in ``processes`` spawned child processes, each a contiguous share of a batch.

    Children are started with the worker and restarted at the next call after one died or
    was killed (:meth:`abort`)."""

    def __init__(
        self,
        spec: ChildSpec,
        start_timeout_s: float = 120.0,
        encode_state: Callable[[UserState], bytes] = encode,
        processes: int = 1,
    ) -> None:
        self.encode_state = encode_state  # the state store's, which reuses the table's bytes
        ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
        self.children = [
            _Child(spec, ctx, start_timeout_s, f"interest-ranking-{n}") for n in range(processes)
        ]
        self._lock = threading.Lock()

    def start(self) -> ProcessRanking:
        """Start the children now (they import and open their scorers while the worker
        starts)."""
        with self._lock:
            for child in self.children:
                child.ensure_started()
        return self

    def ready(self) -> bool:
        """Every child has started (imported its libraries, opened its scorer)."""
        if not self._lock.acquire(blocking=False):  # a call holds them: not now
            return False
        try:
            return all([child.poll_ready() for child in self.children])
        finally:
            self._lock.release()

    def prepare(self, states: list[UserState | bytes]) -> list[bytes]:
        encode_state = self.encode_state
        return [s if isinstance(s, bytes) else encode_state(s) for s in states]

    def __call__(self, prepared: list[bytes]) -> RemoteRanked:
        n = len(self.children)
        size = -(-len(prepared) // n) if prepared else 0
        shares = [prepared[i * size : (i + 1) * size] for i in range(n)] if size else [[]]
        with self._lock:
            busy: list[_Child] = []
            replies: list[tuple[str, Any]] = []
            try:
                for child, share in zip(self.children, shares, strict=False):
                    if share:
                        busy.append(child)
                        child.send(share)
                for child in busy:
                    replies.append(child.receive())
            except ScorerError:
                for child in busy[len(replies) :]:  # their replies would come to the next call
                    child.stop()
                raise
        items: list[bytes] = []
        interests: list[bytes] = []
        version: str | None = None
        for kind, body in replies:
            if kind != "ok":
                raise ScorerError(f"ranking failed: {body}")
            items.extend(body[0])
            interests.extend(body[1])
            version = body[2]
        return RemoteRanked(items, interests, version)

    def settle(self, states: list[UserState | bytes], prepared: list[bytes]) -> None:
        pass

    def abort(self) -> None:
        """A call hangs: kill the children (the waiting thread gets EOF; the next call
        starts new ones)."""
        log.warning("the ranking process does not answer: restarting it")
        for child in self.children:
            child.kill()

    def close(self) -> None:
        for child in self.children:
            child.close()
