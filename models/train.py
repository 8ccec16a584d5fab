"""Training: item embeddings (implicit ALS), then the interest-strength network, then export.

The network's training pairs are made by replaying the event log, in event-time order,
through the stream's own functional core (``stream.interest.fold`` for the users,
``stream.trending.fold_trend`` for the categories): for every event, the user's state and the
trending just before it give the features (interest vectors, item and category strengths,
the item's trending score, via ``stream.candidates``), the event's item is the positive and
sampled items (catalog and the user's own candidates) are the negatives. So the features at
training time are computed by exactly the code that computes them in the stream.

Evaluation is time-based: embeddings and network are fitted on the events up to a quantile
of event time (default 0.8) and measured on the later events. The exported model is then,
by default, refitted on all events with the same settings so the newest items are
recommendable (``refit_full``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.embeddings import (
    Interactions,
    MFConfig,
    build_interactions,
    category_index,
    factorize,
)
from models.export import EmbeddingTable, ModelArtifacts, data_fingerprint, export_version
from models.ranker import (
    DenseStack,
    RankerConfig,
    best_f1_threshold,
    binary_metrics,
    fit,
    pair_features,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from stream.events import Event
    from stream.settings import Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything training decides besides the settings; defaults fit the Taobao samples."""

    mf: MFConfig = field(default_factory=MFConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    neg_popular: int = 1  # negatives per positive drawn in proportion to engagement
    neg_uniform: int = 1  # negatives per positive drawn uniformly over the catalog
    neg_candidates: int = 6  # negatives per positive drawn from the user's candidate union
    # share of training pairs (positives and negatives alike, seeded) whose item is shown
    # to the network as serving shows an item unknown to the model: zero embedding and
    # popularity, so it learns to rank cold items from the per-pair features
    cold_fraction: float = 0.4
    ranking_k: int = 20  # the guard compares HR@k / NDCG@k of network and blend
    retrieval_k: int = 50  # retrieval results in the replayed union (recommend_batch's)
    split_quantile: float = 0.8
    num_candidates: int = 50
    refit_full: bool = True
    folds: int = 0


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
    feats: np.ndarray  # (n, F) float32 stream.candidates per-pair features
    cold: np.ndarray  # (n,) bool: simulated cold item (network sees it as unknown)

    def take(self, mask: np.ndarray) -> Examples:
        return Examples(*(getattr(self, f)[mask] for f in Examples.__slots__))

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
class TrainedModel:
    """What :func:`train` returns: the model to export and how well it did."""

    artifacts: ModelArtifacts
    metrics: dict[str, Any]
    config: TrainConfig
    _module: Any = None

    def item_vectors(self, version: str = "trained") -> EmbeddingTable:
        """The embeddings as the core's ItemVectors (for replaying state offline)."""
        return EmbeddingTable(version, self.artifacts.item_ids, self.artifacts.embeddings)

    def module(self) -> Any:
        """The serving tf.Module (recommend / recommend_mask / score), built once."""
        if self._module is None:
            from models.export import build_module

            self._module = build_module(self.artifacts)
        return self._module

    def scorer(self, version: str = "trained") -> Any:
        """An in-memory Scorer over this model (offline evaluation without an export)."""
        from models.scoring import StaticScorer

        return StaticScorer.from_trained(self, version)

    def export(
        self,
        model_dir: Path,
        *,
        settings: Settings | None = None,
        fingerprint: str | None = None,
    ) -> Path:
        return export_version(
            self.artifacts,
            model_dir,
            metrics=self.metrics,
            settings=settings.redacted() if settings is not None else None,
            fingerprint=fingerprint,
            extra={"train_config": _jsonable(asdict(self.config))},
        )


# ----------------------------------------------------------------------------- progress


class _Steps:
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


# ----------------------------------------------------------------------------- training


def train(
    events: Sequence[Event],
    settings: Settings | None = None,
    *,
    epochs: int | None = None,
    seed: int = 7,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> TrainedModel:
    """Fit, validate on the later events, optionally cross-validate, refit on everything."""
    from stream.interest import InterestConfig

    if settings is None:
        from stream.settings import Settings

        settings = Settings()
    cfg = config or TrainConfig(mf=MFConfig(dim=settings.embedding_dim))
    if epochs is not None:
        cfg = _with_epochs(cfg, epochs)
    if not events:
        raise ValueError("no events to train on")
    started = time.perf_counter()
    interest = InterestConfig.from_settings(settings)
    evs = sorted(events, key=lambda e: e.ts)
    cut = int(np.quantile(np.array([e.ts for e in evs], np.int64), cfg.split_quantile))
    train_ev = [e for e in evs if e.ts <= cut]
    steps = _Steps(progress)
    rng = np.random.default_rng(seed)

    emb = _fit_embeddings(train_ev, cfg, settings, seed, steps, "embeddings (train split)")
    serving = _serving_options(settings)
    groups: list[RankGroup] = []
    examples, unknown = _replay(
        evs,
        emb,
        cfg,
        interest,
        rng,
        steps,
        "replay (all events)",
        groups=groups,
        validate_after=cut,
        **serving,
    )
    is_val = examples.ts > cut
    tr, va = examples.take(~is_val), examples.take(is_val)
    x_tr, x_va = features(tr, emb.artifacts), features(va, emb.artifacts)
    with steps.task("network (train split)", cfg.ranker.epochs) as adv:
        res = fit(x_tr, tr.label, cfg.ranker, seed=seed, on_epoch=lambda e, logs: adv())
    emb.artifacts.network, emb.history = res.network, res.history

    p_tr, p_va = res.network.predict(x_tr), res.network.predict(x_va)
    threshold = best_f1_threshold(tr.label, p_tr)
    metrics: dict[str, Any] = {
        "validation": binary_metrics(va.label, p_va, threshold),
        "train": binary_metrics(tr.label, p_tr, threshold),
        "validation_popularity_auc": _pop_auc(va, emb.artifacts),
        "ranking": ranking_validation(groups, res.network, emb.artifacts, cfg.ranking_k, serving),
        "threshold_rule": "maximises F1 on the training split, applied unchanged to validation",
        "split": {
            "quantile": cfg.split_quantile,
            "cut_ts_ms": cut,
            "train_events": len(train_ev),
            "validation_events": len(evs) - len(train_ev),
            "validation_positives_unknown_item": unknown,
        },
        "negatives_per_positive": {
            "popular": cfg.neg_popular,
            "uniform": cfg.neg_uniform,
            "candidates": cfg.neg_candidates,
        },
        "cold_fraction": cfg.cold_fraction,
        "mf": {
            "loss_first": emb.mf_losses[0],
            "loss_last": emb.mf_losses[-1],
            "iterations": cfg.mf.iterations,
        },
        "epochs": cfg.ranker.epochs,
        "history": res.history,
    }
    if cfg.folds and cfg.folds > 1:
        metrics["cv"] = _cross_validate(tr, va, x_tr, x_va, cfg, seed, steps)

    final = emb.artifacts
    if cfg.refit_full and len(train_ev) < len(evs):
        full = _fit_embeddings(evs, cfg, settings, seed, steps, "embeddings (all events)")
        ex_all, _ = _replay(evs, full, cfg, interest, rng, steps, "replay (refit)", **serving)
        with steps.task("network (all events)", cfg.ranker.epochs) as adv:
            res_all = fit(
                features(ex_all, full.artifacts),
                ex_all.label,
                cfg.ranker,
                seed=seed,
                on_epoch=lambda e, logs: adv(),
            )
        full.artifacts.network = res_all.network
        final = full.artifacts
        metrics["refit_full"] = {"events": len(evs), "items": len(final.item_ids)}
    metrics["items"] = len(final.item_ids)
    metrics["categories"] = len(final.categories) - 1
    metrics["users"] = len({e.user_id for e in evs})
    metrics["events"] = len(evs)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return TrainedModel(final, metrics, cfg)


def _with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, ranker=replace(cfg.ranker, epochs=epochs))


def _fit_embeddings(
    events: Sequence[Event],
    cfg: TrainConfig,
    settings: Settings,
    seed: int,
    steps: _Steps,
    label: str,
) -> Stage:
    data = build_interactions(events)
    with steps.task(label, cfg.mf.iterations) as adv:
        mf = factorize(data, cfg.mf, seed=seed, on_iteration=lambda i, loss: adv())
    art = ModelArtifacts(
        item_ids=data.item_ids,
        item_categories=data.item_categories,
        categories=category_index(data.item_categories),
        popularity=data.popularity,
        embeddings=mf.item_factors,
        network=DenseStack([], []),
        num_candidates=cfg.num_candidates,
        top_k=settings.top_k,
    )
    return Stage(data, art, mf.losses, {})


def _serving_options(settings: Settings) -> dict[str, Any]:
    """How the stream builds and ranks the union (the replay builds it the same way)."""
    return {
        "limit": int(getattr(settings, "candidate_limit", 200)),
        "policy": str(getattr(settings.purchased_policy, "value", settings.purchased_policy)),
        "trending_items": int(getattr(settings, "trending_items", 200)),
    }


GLOBAL_TOP = 50  # global trending items handed to the candidate generator (as the worker)


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


class _Retrieval:
    """The `recommend` signature's retrieval stage in numpy (see models.export._retrieval).

    (unit short + unit long) . unit item embedding + category_weight x the user's share in
    the item's category (both horizons) + popularity_weight x normalised popularity; the
    top k. The replay adds these to the union as serving does (reason
    ``similar_to_your_interests``): without them training and validation would never see
    the model's own retrieval candidates, the items its embedding favours.
    """

    def __init__(self, art: ModelArtifacts, k: int) -> None:
        emb = art.embeddings.astype(np.float32)
        self.unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-6)
        self.cat_idx = art.item_category_index()
        self.cat_pos = {c: n for n, c in enumerate(art.categories)}
        self.n_cat = len(art.categories)
        pop = art.popularity.astype(np.float32)
        self.bias = art.popularity_weight * pop / max(float(pop.max(initial=0)), 1e-6)
        self.cat_weight = art.category_weight
        self.ids = art.item_ids
        self.index = {i: n for n, i in enumerate(art.item_ids)}
        self.names = [None if c.startswith("__") else c for c in art.item_categories]
        self.k = min(k, len(art.item_ids))

    def __call__(self, state: Any, short: np.ndarray, long: np.ndarray, policy: str) -> list[Any]:
        from models.scoring import Recommended
        from stream.interest import LONG, SHORT

        if self.k <= 0:
            return []
        user = short / max(float(np.linalg.norm(short)), 1e-6)
        user = user + long / max(float(np.linalg.norm(long)), 1e-6)
        score = self.unit @ user.astype(np.float32) + self.bias
        share = np.zeros((2, self.n_cat), np.float64)
        for name, v in state.categories.items():
            share[:, self.cat_pos.get(name, self.n_cat - 1)] += (v[SHORT], v[LONG])
        share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-6)
        score = score + self.cat_weight * share.sum(axis=0)[self.cat_idx]
        if policy == "exclude" and state.purchased:
            for item in state.purchased:
                n = self.index.get(item)
                if n is not None:
                    score[n] = -np.inf
        top = np.argpartition(-score, self.k - 1)[: self.k]
        top = top[np.argsort(-score[top], kind="stable")]
        return [
            Recommended(self.ids[n], 0.0, self.names[n], "similar_to_your_interests")
            for n in top.tolist()
            if score[n] > -np.inf
        ]


def _replay(
    events: Sequence[Event],
    stage: Stage,
    cfg: TrainConfig,
    interest: Any,
    rng: np.random.Generator,
    steps: _Steps,
    label: str,
    *,
    limit: int = 200,
    policy: str = "demote",
    trending_items: int = 200,
    groups: list[RankGroup] | None = None,
    validate_after: int | None = None,
) -> tuple[Examples, int]:
    """Replay all events in event-time order through both aggregations; emit training pairs.

    Each user's state is folded by ``stream.interest.fold``, each category's trending by
    ``stream.trending.fold_trend`` and the global trending by ``GlobalTrend``, exactly as
    the stream does, so the features of a pair (the state and the trending just before the
    event, read at the event's time) are what serving computes. The event's item is the
    positive, also when the model does not know it (serving scores such items from their
    per-pair features); negatives are sampled from the catalog (popular and uniform) and
    from the user's candidate union, built by ``stream.candidates.generate`` as serving
    builds it (the items the ranker must actually tell apart). A seeded ``cold_fraction``
    of all pairs is marked cold: the network sees the item as unknown to the model.

    With ``groups``, every target-like event after ``validate_after`` (not a repeat browse)
    of a user seen before also records the full union for the ranking validation.

    Returns the examples and how many positives' items the model does not know.
    """
    from stream.candidates import blend_scores, components, features_from, generate
    from stream.interest import fold, new_state
    from stream.trending import GlobalTrend, TrendConfig, fold_trend, new_trend

    art = stage.artifacts
    table = EmbeddingTable("replay", art.item_ids, art.embeddings)
    index = stage.interactions.item_index
    trend_cfg = TrendConfig(interest.half_life_short_ms, interest.half_life_long_ms, trending_items)
    sampler = NegativeSampler(stage.interactions.item_counts, cfg.neg_popular, cfg.neg_uniform)
    rows = _Rows(art, index, cfg.cold_fraction)
    retrieval = _Retrieval(art, cfg.retrieval_k)
    states: dict[str, Any] = {}
    users: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    trends: dict[str, Any] = {}
    global_trend = GlobalTrend(trend_cfg)
    unknown = 0
    with steps.task(label, len(events)) as adv:
        for ev in sorted(events, key=lambda e: e.ts):
            state = states.get(ev.user_id)
            if state is None:
                state = states[ev.user_id] = new_state(ev.user_id, interest)
                users[ev.user_id] = len(users)
            pos = index.get(ev.item_id)
            unknown += pos is None
            cands = []
            gtop: list[tuple[str, str | None, float]] = []
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
                )
            negs = [
                art.item_ids[i] for i in sampler.sample(rng, exclude=-1 if pos is None else pos)
            ]
            pool = [c.item_id for c in cands if c.item_id != ev.item_id]
            if pool and cfg.neg_candidates > 0:
                negs += [pool[i] for i in rng.integers(0, len(pool), cfg.neg_candidates).tolist()]
            rows.add(state, trends, gtop, ev, [ev.item_id, *negs], users[ev.user_id], rng)
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
                group = RankGroup(at)
                if at >= 0:
                    parts = components(state, cands, trends, gtop, ev.ts)
                    group.purchased = parts.purchased.copy()
                    group.ids = ids
                    group.blend_rank = _rank_in(blend_scores(parts), group, policy)
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
    return rows.examples(art.dim), unknown


def _rank_in(scores: np.ndarray, group: RankGroup, policy: str) -> int:
    """0-based rank of the group's item under ``scores`` as stream.candidates.rank orders."""
    from stream.candidates import DEMOTE_FACTOR

    s = np.clip(np.nan_to_num(np.asarray(scores, np.float64), nan=0.0), 0.0, 1.0)
    if policy == "demote" and group.purchased is not None:
        s = np.where(group.purchased, s * DEMOTE_FACTOR, s)
    p, mine = s[group.pos], group.ids[group.pos]
    return int(np.sum(s > p)) + sum(
        1 for n in np.flatnonzero(s == p).tolist() if group.ids[n] < mine
    )


def ranking_validation(
    groups: Sequence[RankGroup],
    network: DenseStack,
    art: ModelArtifacts,
    k: int,
    serving: dict[str, Any],
) -> dict[str, Any]:
    """HR@k and NDCG@k of the network and of the blend on the validation window: the guard.

    Every target-like validation event of a known user is one list: the union serving would
    build at that moment (with this model's retrieval), ranked once by the network and once
    by the transparent blend; an item outside the union is a miss for both. ``use_network``
    (the network is exported as the ranker) only when it beats the blend: higher HR@k, or
    equal HR@k and higher NDCG@k.
    """
    net_ranks: list[int] = []
    blend_ranks: list[int] = []
    inside = [g for g in groups if g.pos >= 0]
    for start in range(0, len(inside), 256):
        chunk = inside[start : start + 256]
        sizes = [len(g.ids) for g in chunk]
        x = network_input(
            np.repeat(np.stack([g.short for g in chunk]), sizes, axis=0),
            np.repeat(np.stack([g.long for g in chunk]), sizes, axis=0),
            np.concatenate([g.item for g in chunk]),
            np.zeros(sum(sizes), bool),
            np.concatenate([g.feats for g in chunk]),
            art,
        )
        p = network.predict(x)
        for g, part in zip(chunk, np.split(p, np.cumsum(sizes)[:-1]), strict=True):
            net_ranks.append(_rank_in(part, g, serving["policy"]))
            blend_ranks.append(g.blend_rank)
    out: dict[str, Any] = {
        "lists": len(groups),
        "item_in_union": len(inside),
        "k": k,
        "candidate_limit": serving["limit"],
    }
    for name, ranks in (("network", net_ranks), ("blend", blend_ranks)):
        r = np.asarray(ranks, np.int64)
        hit = r < k
        n = max(len(groups), 1)
        out[name] = {
            f"hr@{k}": float(hit.sum() / n),
            f"ndcg@{k}": float(np.sum(1.0 / np.log2(r[hit] + 2.0)) / n),
        }
    net = (out["network"][f"hr@{k}"], out["network"][f"ndcg@{k}"])
    bl = (out["blend"][f"hr@{k}"], out["blend"][f"ndcg@{k}"])
    out["use_network"] = bool(len(groups) > 0 and net > bl)
    out["rule"] = (
        f"the network ranks the union only if it beat the blend on the validation window "
        f"(HR@{k}, then NDCG@{k}); otherwise metadata.json ranking = blend"
    )
    return out


class _Rows:
    """Accumulates training pairs; features come from stream.candidates (serving's code)."""

    def __init__(self, art: ModelArtifacts, index: dict[str, int], cold: float = 0.0) -> None:
        self.art, self.index, self.cold = art, index, cold
        self.cat_of = dict(zip(art.item_ids, art.item_categories, strict=True))
        self.cols: dict[str, list[Any]] = {
            k: [] for k in ("short", "long", "cat", "item", "label", "user", "ts", "feats", "cold")
        }

    def vectors(self, state: Any, ev: Event) -> tuple[np.ndarray, np.ndarray]:
        """The user's raw short and long vectors at the event's time (zeros when none)."""
        from stream.interest import LONG, SHORT, interest_vector

        if state.t_ref is None or state.vectors is None:
            zeros = np.zeros(self.art.dim, np.float32)
            return zeros, zeros
        return interest_vector(state, SHORT, ev.ts), interest_vector(state, LONG, ev.ts)

    def add(
        self,
        state: Any,
        trends: dict[str, Any],
        global_top: Sequence[tuple[str, str | None, float]],
        ev: Event,
        items: list[str],
        uid: int,
        rng: np.random.Generator,
    ) -> None:
        from stream.candidates import Candidate, components, features_from

        s, lv = self.vectors(state, ev)
        cands = [Candidate(i, self._category(i, ev), "") for i in items]
        parts = components(state, cands, trends, global_top, ev.ts)
        feats = features_from(parts)
        cold = rng.random(len(items)) < self.cold if self.cold > 0 else np.zeros(len(items), bool)
        c = self.cols
        for n, item in enumerate(items):
            c["short"].append(s)
            c["long"].append(lv)
            c["cat"].append((*parts.cat[n], *parts.cat_total))
            c["item"].append(self.index.get(item, -1))
            c["label"].append(1.0 if n == 0 else 0.0)
            c["user"].append(uid)
            c["ts"].append(ev.ts)
            c["feats"].append(feats[n])
            c["cold"].append(bool(cold[n]))

    def _category(self, item: str, ev: Event) -> str | None:
        """The catalog's category (as serving knows it), the event's for the event's item."""
        name = self.cat_of.get(item)
        if name is None or name.startswith("__"):
            return ev.category if item == ev.item_id else None
        return name

    def examples(self, d: int) -> Examples:
        from stream.candidates import N_FEATURES

        c = self.cols
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
    norms = np.linalg.norm(emb, axis=1)
    scales = np.array(
        [
            max(float(norms.mean()) if len(norms) else 1.0, 1e-6),
            max(float(art.popularity.max(initial=0)), 1e-6),
        ],
        np.float32,
    )
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


def _pop_auc(ex: Examples, art: ModelArtifacts) -> float:
    """AUC of popularity alone on the same pairs: the bar the network must clear."""
    from models.ranker import roc_auc

    if not len(ex):
        return float("nan")
    pop = np.where(ex.item >= 0, art.popularity[np.maximum(ex.item, 0)], 0.0)
    return roc_auc(ex.label, pop)


def _cross_validate(
    tr: Examples,
    va: Examples,
    x_tr: np.ndarray,
    x_va: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    steps: _Steps,
) -> dict[str, Any]:
    """k-fold over users: fit on the other users' earlier events, test on the fold's later.

    The embeddings are shared (fitted on every user's earlier events), so this measures how
    well the network generalises to users it was not fitted on, in the future.
    """
    users = np.unique(np.concatenate([tr.user, va.user]))
    rng = np.random.default_rng(seed)
    groups = np.array_split(rng.permutation(users), cfg.folds)
    per_fold = []
    with steps.task(f"{cfg.folds}-fold CV over users", cfg.folds) as adv:
        for k, group in enumerate(groups):
            held = np.isin(tr.user, group)
            test = np.isin(va.user, group)
            if held.all() or not test.any():
                adv()
                continue
            res = fit(x_tr[~held], tr.label[~held], cfg.ranker, seed=seed + k)
            thr = best_f1_threshold(tr.label[~held], res.network.predict(x_tr[~held]))
            per_fold.append(binary_metrics(va.label[test], res.network.predict(x_va[test]), thr))
            adv()
    keys = ("auc", "log_loss", "accuracy", "precision", "recall", "f1")
    summary: dict[str, Any] = {"folds": cfg.folds, "evaluated": len(per_fold)}
    for key in keys:
        vals = np.array([m[key] for m in per_fold], np.float64)
        summary[key] = {
            "mean": float(np.nanmean(vals)) if len(vals) else None,
            "std": float(np.nanstd(vals)) if len(vals) else None,
        }
    return summary


# ----------------------------------------------------------------------------- command


def train_command(
    settings: Settings,
    events: list[Path],
    out_dir: Path,
    *,
    epochs: int | None,
    folds: int,
    seed: int,
) -> Path:
    """`interest train`: load files, train with progress bars, export, print a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.data import load_events

    console = Console()
    rejected: dict[str, int] = {}
    with console.status("reading events"):
        evs = load_events(events, settings=settings, rejected=rejected)
    console.print(
        f"read {len(evs):,} events from {len(events)} file(s)"
        + (f"; rejected {sum(rejected.values()):,} {rejected}" if rejected else "")
    )
    cfg = TrainConfig(mf=MFConfig(dim=settings.embedding_dim), folds=folds)
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        model = train(evs, settings, epochs=epochs, seed=seed, config=cfg, progress=progress)
    with console.status("exporting"):
        path = model.export(out_dir, settings=settings, fingerprint=data_fingerprint(events))
    (path / "metrics.json").write_text(json.dumps(_jsonable(model.metrics), indent=1))
    console.print(summary_table(model.metrics, path))
    return path


def summary_table(metrics: dict[str, Any], path: Path) -> Any:
    """The end-of-training table: validation metrics and where the model went."""
    from rich.table import Table

    val = metrics["validation"]
    t = Table(title=f"model version {path.name}", show_header=True)
    t.add_column("metric")
    t.add_column("validation", justify="right")
    t.add_column("train", justify="right")
    for key in ("auc", "log_loss", "accuracy", "precision", "recall", "f1"):
        t.add_row(key, f"{val[key]:.4f}", f"{metrics['train'][key]:.4f}")
    t.add_row("threshold (max F1 on train)", f"{val['threshold']:.4f}", "")
    t.add_row("popularity-only AUC", f"{metrics['validation_popularity_auc']:.4f}", "")
    if "cv" in metrics:
        cv = metrics["cv"]
        t.add_row(
            f"{cv['folds']}-fold CV AUC (users)",
            f"{cv['auc']['mean']:.4f} ± {cv['auc']['std']:.4f}",
            "",
        )
    t.add_row("validation pairs", f"{val['examples']:,} ({val['positives']:,} pos)", "")
    t.add_row("items / categories", f"{metrics['items']:,} / {metrics['categories']:,}", "")
    t.add_row("seconds", f"{metrics['seconds']}", "")
    t.caption = str(path)
    return t


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
