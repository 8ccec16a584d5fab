"""The training replay: events in time order through the stream's own core, into pairs.

Every event is replayed through the functions the worker runs (``stream.core.interest.fold``
for the user, ``stream.core.trending`` for the categories and the global trend,
``stream.core.candidates.generate`` for the union, ``stream.core.features`` for the
features, and the exported module's retrieval), so the features of a training pair are
exactly what serving computes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from models.serving.model_dir import EmbeddingTable
from models.training.embeddings import Interactions
from models.training.module import ModelArtifacts, item_scales, retrieval_scores
from models.training.ranker import pair_features
from models.training.sequence import SequenceRunner, SequenceWeights
from stream.core.candidates import SEQUENCE_CANDIDATES, apply_policy, generate
from stream.core.decay import LONG, SHORT
from stream.core.features import (
    N_FEATURES,
    UserColumns,
    blend_scores,
    components,
    features_from,
    gather,
)
from stream.core.interest import InterestConfig, UserState, fold, interest_vector, new_state
from stream.core.sequence import sequence_columns
from stream.core.trending import (
    GLOBAL_TOP,
    CategoryTrend,
    GlobalTrend,
    TrendConfig,
    TrendEntry,
    fold_trend,
    new_trend,
)
from stream.core.types import Candidate, Event, Recommended, RecommendReason

if TYPE_CHECKING:
    from rich.progress import Progress


class ReplayConfig(Protocol):
    """What the replay reads of the training configuration (models.training.train)."""

    neg_popular: int
    neg_uniform: int
    neg_candidates: int
    cold_fraction: float
    retrieval_k: int


class Steps:
    """Optional rich progress: no-ops when training runs without a console."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @contextlib.contextmanager
    def task(self, name: str, total: float | None) -> Iterator[Any]:
        if self.progress is None:
            yield lambda n=1: None
            return
        tid = self.progress.add_task(name, total=total)
        try:
            yield lambda n=1: self.progress.advance(tid, n)  # type: ignore[union-attr]
        finally:
            self.progress.update(tid, completed=total or 0, visible=True)


PER_PAIR = ("short", "long", "cat", "item", "label", "user", "ts", "feats", "cold", "seq")


@dataclass(slots=True)
class Examples:
    """Training pairs as arrays: the user's raw state at the event, the item, the label."""

    short: np.ndarray  # (n, d) float32
    long: np.ndarray  # (n, d) float32
    cat: np.ndarray  # (n, 4) float32: cat_short, cat_long, total_short, total_long
    item: np.ndarray  # (n,) int32 model item index, -1 for an item the model lacks
    label: np.ndarray  # (n,) float32
    user: np.ndarray  # (n,) int32
    ts: np.ndarray  # (n,) int64 event time (ms)
    feats: np.ndarray  # (n, F) float32 stream.core.candidates per-pair features
    cold: np.ndarray  # (n,) bool: simulated cold item (network sees it as unknown)
    seq: np.ndarray  # (n,) int32: the pair's event, a row of seq_items / seq_types (-1: none)
    # the user's recent events before each replayed event, as the sequence model reads them
    # (right-aligned model item / event-type indices, -1 padding); (E, L), empty: not kept
    seq_items: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    seq_types: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))

    def take(self, mask: np.ndarray) -> Examples:
        pairs = (getattr(self, f)[mask] for f in PER_PAIR)
        return Examples(*pairs, self.seq_items, self.seq_types)

    def __len__(self) -> int:
        return len(self.label)


@dataclass(slots=True)
class Stage:
    """One fitted pair (embeddings + network) over one set of events."""

    interactions: Interactions
    artifacts: ModelArtifacts
    mf_losses: list[float]
    history: dict[str, list[float]]


@dataclass(slots=True)
class RankGroup:
    """One validation event: the union serving would rank then, and where the item is in it.

    ``pos`` is the event item's row in the union (-1: not in the union, a miss for any
    ranking); the arrays are only kept when it is in it.
    """

    pos: int
    blend_rank: int = -1  # 0-based rank of the item under the blend (purchased policy applied)
    short: np.ndarray | None = None  # (d,)
    long: np.ndarray | None = None
    item: np.ndarray | None = None  # (M,) model index, -1 unknown
    feats: np.ndarray | None = None  # (M, F)
    ids: list[str] = field(default_factory=list)
    purchased: np.ndarray | None = None  # (M,) bool
    seq: int = -1  # the event's row of the replay's seq_items / seq_types (-1: not kept)


class Retriever:
    """The exported module's retrieval (models.training.module.retrieval_scores, run here in
    numpy), one user at a time.

    The replay adds these items to the union as serving does (reason
    ``similar_to_your_interests``): without them training and validation would never see
    the model's own retrieval candidates, the items its embedding favours. The scoring is
    the one function the SavedModel runs, so the two cannot drift.
    """

    def __init__(self, art: ModelArtifacts, k: int) -> None:
        emb = art.embeddings.astype(np.float32)
        self.unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
        self.item_cat = art.item_category_index()
        pop = art.popularity.astype(np.float32)
        self.pop_scaled = pop / item_scales(art)[1]
        self.weights = (np.float32(art.category_weight), np.float32(art.popularity_weight))
        self.k = min(k, len(art.item_ids))
        self.ids = art.item_ids
        self.index = {i: n for n, i in enumerate(art.item_ids)}
        self.cat_pos = {c: n for n, c in enumerate(art.categories)}
        self.n_cat = len(art.categories)
        self.names = category_names(art)

    def __call__(
        self, state: UserState, short: np.ndarray, long: np.ndarray, policy: str
    ) -> list[Recommended]:
        if self.k <= 0:
            return []
        other = self.n_cat - 1
        slots = [self.cat_pos.get(name, other) for name in state.categories.keys_]
        cats = np.zeros((self.n_cat, 2), np.float32)
        np.add.at(cats, slots, state.categories.vals)
        cats = cats.T
        score = retrieval_scores(
            np,
            np.asarray(short, np.float32)[None],
            np.asarray(long, np.float32)[None],
            cats[SHORT : SHORT + 1],
            cats[LONG : LONG + 1],
            self.unit,
            self.item_cat,
            self.pop_scaled,
            *self.weights,
        )[0]
        if policy == "exclude":
            for item in state.purchased:
                n = self.index.get(item)
                if n is not None:
                    score[n] = -np.inf
        top = best_first(score, self.k)
        return [
            Recommended(self.ids[n], 0.0, self.names[n], RecommendReason.similar_to_your_interests)
            for n in top.tolist()
            if score[n] > -np.inf
        ]


def best_first(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first, ties to the lower index (as TF's top_k)."""
    k = min(k, len(score))
    if k <= 0:
        return np.zeros(0, np.int64)
    kth = np.partition(score, len(score) - k)[len(score) - k]
    above = np.flatnonzero(score > kth)
    tied = np.flatnonzero(score == kth)[: k - len(above)]
    top = np.concatenate([above, tied])
    return top[np.lexsort((top, -score[top]))]


def replay(
    events: Sequence[Event],
    stage: Stage,
    cfg: ReplayConfig,
    interest: InterestConfig,
    rng: np.random.Generator,
    steps: Steps,
    label: str,
    *,
    limit: int = 200,
    policy: str = "demote",
    trending_items: int = 200,
    groups: list[RankGroup] | None = None,
    validate_after: int | None = None,
    sequence: SequenceWeights | None = None,
) -> tuple[Examples, int]:
    """Replay all events in event-time order through both aggregations; emit training pairs.

    Each user's state is folded by ``stream.core.interest.fold``, each category's trending by
    ``stream.core.trending.fold_trend`` and the global trending by ``GlobalTrend``, exactly as
    the stream does, so the features of a pair (the state and the trending just before the
    event, read at the event's time) are what serving computes. The event's item is the
    positive, also when the model does not know it (serving scores such items from their
    per-pair features); negatives are sampled from the catalog (popular and uniform) and
    from the user's candidate union, built by ``stream.core.candidates.generate`` as serving
    builds it (the items the ranker must actually tell apart). A seeded ``cold_fraction``
    of all pairs is marked cold: the network sees the item as unknown to the model.

    With ``groups``, every target-like event after ``validate_after`` (not a repeat browse)
    of a user seen before also records the full union for the ranking validation.

    With a ``sequence`` model, each event also records the user's recent events before it
    (``state.sequence`` as the model reads it) for the fused network's sequence feature,
    and the model's next items then join the union as serving adds them (reason
    ``next_in_sequence``; :func:`next_in_sequence`): the network, the fused network and
    the guard see the candidates they will rank.

    Returns the examples and how many positives' items the model does not know.
    """
    art = stage.artifacts
    table = EmbeddingTable("replay", art.item_ids, art.embeddings)
    index = stage.interactions.item_index
    trend_cfg = TrendConfig(interest.half_life_short_ms, interest.half_life_long_ms, trending_items)
    sampler = NegativeSampler(stage.interactions.item_counts, cfg.neg_popular, cfg.neg_uniform)
    rows = Rows(art, index, cfg.cold_fraction)
    ordered = sorted(events, key=lambda e: e.ts)
    nexts = (
        next_in_sequence(ordered, sequence, art, index, interest)
        if sequence is not None and interest.sequence_length > 0
        else None
    )
    retrieval = Retriever(art, cfg.retrieval_k)
    states: dict[str, UserState] = {}
    users: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    trends: dict[str, CategoryTrend] = {}
    global_trend = GlobalTrend(trend_cfg)
    unknown = 0
    with steps.task(label, len(events)) as adv:
        for n, ev in enumerate(ordered):
            state = states.get(ev.user_id)
            if state is None:
                state = states[ev.user_id] = new_state(ev.user_id, interest)
                users[ev.user_id] = len(users)
            pos = index.get(ev.item_id)
            unknown += pos is None
            cands = []
            gtop: list[tuple[str, str | None, float]] = []
            cols = gather([state], [ev.ts])  # the user's columns before the event, at its time
            if state.t_ref is not None:
                gtop = global_trend.top(GLOBAL_TOP, ev.ts)
                retrieved = retrieval(state, *rows.vectors(state, ev), policy)
                cands = generate(
                    state,
                    trending=trends,
                    global_top=gtop,
                    retrieved=retrieved,
                    policy=policy,
                    limit=limit,
                    cols=cols,
                    sequenced=nexts.lists[n] if nexts is not None else None,
                )
            negs = [
                art.item_ids[i] for i in sampler.sample(rng, exclude=-1 if pos is None else pos)
            ]
            pool = [c.item_id for c in cands if c.item_id != ev.item_id]
            if pool and cfg.neg_candidates > 0:
                negs += [pool[i] for i in rng.integers(0, len(pool), cfg.neg_candidates).tolist()]
            seq = n if nexts is not None else -1
            rows.add(
                state, cols, trends, gtop, ev, [ev.item_id, *negs], users[ev.user_id], rng, seq
            )
            history = seen.setdefault(ev.user_id, set())
            if (
                groups is not None
                and validate_after is not None
                and ev.ts > validate_after
                and cands
                and (ev.type != "browse" or ev.item_id not in history)
            ):
                ids = [c.item_id for c in cands]
                at = ids.index(ev.item_id) if ev.item_id in ids else -1
                group = RankGroup(at, seq=seq)
                if at >= 0:
                    parts = components(state, cands, trends, gtop, ev.ts, cols=cols)
                    group.purchased = parts.purchased.copy()
                    group.ids = ids
                    group.blend_rank = rank_in(blend_scores(parts), group, policy)
                    group.short, group.long = rows.vectors(state, ev)
                    group.item = np.array([index.get(i, -1) for i in ids], np.int32)
                    group.feats = features_from(parts)
                groups.append(group)
            history.add(ev.item_id)
            fold(state, [ev], interest, vectors=table)
            global_trend.fold([ev])
            if ev.category is not None:
                trend = trends.get(ev.category)
                if trend is None:
                    trend = trends[ev.category] = new_trend(ev.category, trend_cfg)
                fold_trend(trend, [ev], trend_cfg)
            adv()
    if nexts is None:
        return rows.examples(art.dim), unknown
    return rows.examples(art.dim, nexts.seq_items, nexts.seq_types), unknown


def category_names(art: ModelArtifacts) -> list[str | None]:
    """Each catalog item's category as serving names it (None for the placeholder ones)."""
    return [None if c.startswith("__") else c for c in art.item_categories]


@dataclass(slots=True)
class NextInSequence:
    """The sequence model's view of every replayed event (in replay order): the user's
    recent events before it, and the model's next items then."""

    seq_items: np.ndarray  # (events, L) int32, as models.serving.codec.encode_sequences
    seq_types: np.ndarray
    lists: list[list[Recommended]]  # per event; empty for a user's first event


def next_in_sequence(
    ordered: Sequence[Event],
    weights: SequenceWeights,
    art: ModelArtifacts,
    index: Mapping[str, int],
    interest: InterestConfig,
    *,
    k: int = SEQUENCE_CANDIDATES,
    chunk: int = 4096,
) -> NextInSequence:
    """Each event's sequence rows and ``next_in_sequence`` candidates, from batched model
    calls rather than one per event (``chunk``: events whose sequences are copied at once).

    The union of an event needs the model's answer for the sequence just before it, so
    the sequences come first, from a fold of their own (``stream.core.interest.fold``
    without vectors: a state's sequence does not depend on them), in event order as the
    replay folds; serving's encoding (``sequence_columns`` over the model's catalog and
    event types, the model's length) and its top-k (the `next_items` function, through
    :class:`models.training.sequence.SequenceRunner`)."""
    kinds = {t: n for n, t in enumerate(weights.event_types)}
    states: dict[str, UserState] = {}
    parts_i: list[np.ndarray] = []
    parts_t: list[np.ndarray] = []
    known = np.zeros(len(ordered), bool)
    for a in range(0, len(ordered), chunk):
        seqs = []
        for n, ev in enumerate(ordered[a : a + chunk], a):
            state = states.get(ev.user_id)
            if state is None:
                state = states[ev.user_id] = new_state(ev.user_id, interest)
            known[n] = state.t_ref is not None
            seqs.append(state.sequence.copy())
            fold(state, [ev], interest)
        items, types = sequence_columns(seqs, index, kinds, weights.length)
        parts_i.append(items)
        parts_t.append(types)
    seq_items = np.concatenate(parts_i) if parts_i else np.zeros((0, weights.length), np.int32)
    seq_types = np.concatenate(parts_t) if parts_t else np.zeros((0, weights.length), np.int32)
    lists: list[list[Recommended]] = [[] for _ in ordered]
    ask = np.flatnonzero(known)
    if len(ask):
        top, scores = SequenceRunner(weights).next_items(seq_items[ask], seq_types[ask], k)
        ids, cats = art.item_ids, category_names(art)
        reason = RecommendReason.next_in_sequence
        for n, row, p in zip(ask.tolist(), top.tolist(), scores.tolist(), strict=True):
            lists[n] = [
                Recommended(ids[i], float(s), cats[i], reason)
                for i, s in zip(row, p, strict=True)
                if i >= 0
            ]
    return NextInSequence(seq_items, seq_types, lists)


def rank_in(scores: np.ndarray, group: RankGroup, policy: str) -> int:
    """0-based rank of the group's item under ``scores`` as stream.core.candidates.rank orders."""
    bought = group.purchased if group.purchased is not None else np.zeros(len(scores), bool)
    s = apply_policy(scores, bought, policy)
    p, mine = s[group.pos], group.ids[group.pos]
    return int(np.sum(s > p)) + sum(
        1 for n in np.flatnonzero(s == p).tolist() if group.ids[n] < mine
    )


class Rows:
    """Accumulates training pairs; features come from stream.core.features (serving's code)."""

    def __init__(self, art: ModelArtifacts, index: dict[str, int], cold: float = 0.0) -> None:
        self.art, self.index, self.cold = art, index, cold
        self.cat_of = dict(zip(art.item_ids, art.item_categories, strict=True))
        self.cols: dict[str, list[Any]] = {k: [] for k in PER_PAIR}

    def vectors(self, state: UserState, ev: Event) -> tuple[np.ndarray, np.ndarray]:
        """The user's raw short and long vectors at the event's time (zeros when none)."""
        if state.t_ref is None or state.vectors is None:
            zeros = np.zeros(self.art.dim, np.float32)
            return zeros, zeros
        return interest_vector(state, SHORT, ev.ts), interest_vector(state, LONG, ev.ts)

    def add(
        self,
        state: UserState,
        cols: UserColumns,
        trends: Mapping[str, TrendEntry],
        global_top: Sequence[tuple[str, str | None, float]],
        ev: Event,
        items: list[str],
        uid: int,
        rng: np.random.Generator,
        seq: int = -1,
    ) -> None:
        s, lv = self.vectors(state, ev)
        cands = [Candidate(i, self._category(i, ev), "") for i in items]
        parts = components(state, cands, trends, global_top, ev.ts, cols=cols)
        feats = features_from(parts)
        cold = rng.random(len(items)) < self.cold if self.cold > 0 else np.zeros(len(items), bool)
        c = self.cols
        for n, item in enumerate(items):
            c["short"].append(s)
            c["long"].append(lv)
            c["cat"].append((*parts.cat[n], *parts.cat_total[n]))
            c["item"].append(self.index.get(item, -1))
            c["label"].append(1.0 if n == 0 else 0.0)
            c["user"].append(uid)
            c["ts"].append(ev.ts)
            c["feats"].append(feats[n])
            c["cold"].append(bool(cold[n]))
            c["seq"].append(seq)

    def _category(self, item: str, ev: Event) -> str | None:
        """The catalog's category (as serving knows it), the event's for the event's item."""
        name = self.cat_of.get(item)
        if name is None or name.startswith("__"):
            return ev.category if item == ev.item_id else None
        return name

    def examples(
        self, d: int, seq_items: np.ndarray | None = None, seq_types: np.ndarray | None = None
    ) -> Examples:
        """The pairs as arrays; ``seq_items`` / ``seq_types``: the rows their ``seq`` points at."""
        c = self.cols
        empty = np.zeros((0, 0), np.int32)
        return Examples(
            short=np.asarray(c["short"], np.float32).reshape(-1, d),
            long=np.asarray(c["long"], np.float32).reshape(-1, d),
            cat=np.asarray(c["cat"], np.float32).reshape(-1, 4),
            item=np.asarray(c["item"], np.int32),
            label=np.asarray(c["label"], np.float32),
            user=np.asarray(c["user"], np.int32),
            ts=np.asarray(c["ts"], np.int64),
            feats=np.asarray(c["feats"], np.float32).reshape(-1, N_FEATURES),
            cold=np.asarray(c["cold"], bool),
            seq=np.asarray(c["seq"], np.int32),
            seq_items=seq_items if seq_items is not None else empty,
            seq_types=seq_types if seq_types is not None else empty,
        )


class NegativeSampler:
    """Negatives per positive: some in proportion to engagement, some uniform.

    Popularity-proportional negatives stop the network from scoring "popular" as
    "interesting" (retrieval already favours popular items, the network must tell them
    apart); uniform ones cover the long tail so rare items get calibrated scores too.
    """

    def __init__(self, counts: np.ndarray, n_popular: int, n_uniform: int) -> None:
        total = float(counts.sum())
        self.p = counts / total if total > 0 else None
        self.n = len(counts)
        self.n_popular, self.n_uniform = n_popular, n_uniform

    def sample(self, rng: np.random.Generator, exclude: int) -> list[int]:
        if self.n < 2:
            return []
        picks = []
        if self.n_popular and self.p is not None:
            picks.extend(rng.choice(self.n, self.n_popular, p=self.p).tolist())
        if self.n_uniform:
            picks.extend(rng.integers(0, self.n, self.n_uniform).tolist())
        # a draw of the positive itself is redrawn uniformly (not a negative)
        return [
            p if p != exclude else (p + 1 + int(rng.integers(0, self.n - 1))) % self.n
            for p in picks
        ]


def features(ex: Examples, art: ModelArtifacts) -> np.ndarray:
    """The network input for examples, via the same function the SavedModel runs."""
    return network_input(ex.short, ex.long, ex.item, ex.cold, ex.feats, art)


def network_input(
    short: np.ndarray,
    long: np.ndarray,
    item: np.ndarray,
    cold: np.ndarray,
    feats: np.ndarray,
    art: ModelArtifacts,
) -> np.ndarray:
    """pair_features for pairs; an unknown (-1) or cold item gets zero embedding and
    popularity, exactly what the SavedModel does for an item outside its catalog."""
    import tensorflow as tf

    emb = art.embeddings
    scales = item_scales(art)
    known = (item >= 0) & ~np.asarray(cold, bool)
    safe = np.where(known, item, 0)
    x = np.where(known[:, None], emb[safe], 0.0).astype(np.float32)
    pop = np.where(known, art.popularity[safe], 0.0).astype(np.float32)
    out = pair_features(
        tf.constant(np.asarray(short, np.float32)),
        tf.constant(np.asarray(long, np.float32)),
        tf.constant(x),
        tf.constant(pop),
        tf.constant(np.asarray(feats, np.float32)),
        tf.constant(scales),
    )
    return out.numpy()
