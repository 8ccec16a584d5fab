"""Training: item embeddings (implicit ALS), then the interest-strength network, then export.

The network's training pairs are made by replaying the event log, in event-time order,
through the stream's own functional core (``stream.core.interest.fold`` for the users,
``stream.core.trending.fold_trend`` for the categories): for every event, the user's state and the
trending just before it give the features (interest vectors, item and category strengths,
the item's trending score, via ``stream.core.features``), the event's item is the positive and
sampled items (catalog and the user's own candidates) are the negatives. So the features at
training time are computed by exactly the code that computes them in the stream.

Evaluation is time-based: embeddings and network are fitted on the events up to a quantile
of event time (default 0.8) and measured on the later events. The exported model is then,
by default, refitted on all events with the same settings so the newest items are
recommendable (``refit_full``).

Beside them (``TrainConfig.sequence``, built from the INTEREST_SEQUENCE_* settings by
``interest train``) a causal self-attention model over each user's recent events
(models.training.sequence) is fitted on the same split, its item table initialised from the
MF embeddings, validated by HR@k / NDCG@k over the whole catalog on the same target events
as the ranking guard, refitted with the final catalog, and exported in the same version
(signatures ``next_items`` / ``next_scores``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.data import load_events
from models.serving.model_dir import (
    RANKING_BLEND,
    RANKING_FUSED,
    RANKING_NETWORK,
    SEQUENCE_KEY,
    Catalog,
    EmbeddingTable,
    ModelView,
    SequenceInfo,
)
from models.serving.static import StaticScorer
from models.training.embeddings import MFConfig, build_interactions, category_index, factorize
from models.training.export import data_fingerprint, export_version
from models.training.fusion import fused_input, group_probabilities, pair_probabilities
from models.training.module import ModelArtifacts, build_module
from models.training.ranker import (
    DenseStack,
    RankerConfig,
    best_f1_threshold,
    binary_metrics,
    fit,
    roc_auc,
)
from models.training.replay import (
    Examples,
    RankGroup,
    Stage,
    Steps,
    features,
    network_input,
    rank_in,
    replay,
)
from models.training.sequence import (
    SequenceConfig,
    SequenceWeights,
    build_histories,
    fit_sequence,
    sequence_validation,
)
from stream.config import Settings, interest_config
from stream.core.errors import DataFormatError
from stream.core.types import Event

if TYPE_CHECKING:
    from rich.progress import Progress

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
    # the causal self-attention sequence model (models.training.sequence); None: none.
    # `interest train` and train() without a config build it from the settings
    # (sequence_config); INTEREST_SEQUENCE_LENGTH=0 switches it off
    sequence: SequenceConfig | None = None


def sequence_config(settings: Settings, **overrides: Any) -> SequenceConfig | None:
    """The sequence model's configuration from the settings (None when sequence_length is 0)."""
    length = int(getattr(settings, "sequence_length", 0) or 0)
    if length <= 0:
        return None
    return SequenceConfig(
        length=length,
        dim=int(getattr(settings, "sequence_dim", 32)),
        blocks=int(getattr(settings, "sequence_blocks", 2)),
        heads=int(getattr(settings, "sequence_heads", 2)),
        **overrides,
    )


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
            self._module = build_module(self.artifacts)
        return self._module

    def scorer(self, version: str = "trained") -> StaticScorer:
        """An in-memory Scorer over this model (offline evaluation without an export)."""
        art = self.artifacts
        cat = Catalog(
            item_ids=list(art.item_ids),
            item_cat=art.item_category_index(),
            categories=list(art.categories),
            popularity=np.asarray(art.popularity, np.float32),
            num_candidates=art.num_candidates,
            top_k=art.top_k,
        )
        view = ModelView(
            version=version,
            path=Path("."),
            catalog=cat,
            vectors=EmbeddingTable(version, art.item_ids, art.embeddings),
            catalog_map=cat.as_mapping(),
            network_ranking=bool(self.metrics.get("ranking", {}).get("use_network", True)),
            sequence=(
                SequenceInfo.from_metadata({SEQUENCE_KEY: art.sequence.info()})
                if art.sequence is not None
                else None
            ),
            fused=art.fused is not None and art.sequence is not None,
        )
        module = self.module()

        def run(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            fn = module.score if "feats" in inputs else module.recommend
            return {k: v.numpy() for k, v in fn(**inputs).items()}

        def run_next(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return {k: v.numpy() for k, v in module.next_items(**inputs).items()}

        return StaticScorer(view, run, run_next if art.sequence is not None else None)

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
    if settings is None:
        settings = Settings()
    cfg = config or TrainConfig(
        mf=MFConfig(dim=settings.embedding_dim), sequence=sequence_config(settings)
    )
    if epochs is not None:
        cfg = _with_epochs(cfg, epochs)
    if not events:
        raise DataFormatError("no events to train on")
    started = time.perf_counter()
    interest = interest_config(settings)
    evs = sorted(events, key=lambda e: e.ts)
    cut = int(np.quantile(np.array([e.ts for e in evs], np.int64), cfg.split_quantile))
    train_ev = [e for e in evs if e.ts <= cut]
    steps = Steps(progress)
    rng = np.random.default_rng(seed)

    emb = _fit_embeddings(train_ev, cfg, settings, seed, steps, "embeddings (train split)")
    serving = _serving_options(settings)
    seq_metrics: dict[str, Any] = {}
    if cfg.sequence is not None:  # before the replay: its next items join the union
        emb.artifacts.sequence, seq_metrics = _fit_sequence(
            evs, emb, cfg, settings, steps, "sequence model (train split)", cut=cut
        )
    groups: list[RankGroup] = []
    examples, unknown = replay(
        evs,
        emb,
        cfg,
        interest,
        rng,
        steps,
        "replay (all events)",
        groups=groups,
        validate_after=cut,
        sequence=emb.artifacts.sequence,
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
    fused: Fused | None = None
    if emb.artifacts.sequence is not None:
        fused = _fit_fused(tr, va, x_tr, x_va, emb.artifacts, groups, cfg, seed, steps)
        seq_metrics["fused_validation"] = binary_metrics(
            va.label, fused.network.predict(fused.x_va), best_f1_threshold(tr.label, fused.p_tr)
        )
    metrics: dict[str, Any] = {
        "validation": binary_metrics(va.label, p_va, threshold),
        "train": binary_metrics(tr.label, p_tr, threshold),
        "validation_popularity_auc": _pop_auc(va, emb.artifacts),
        "ranking": ranking_validation(
            groups, res.network, emb.artifacts, cfg.ranking_k, serving, fused=fused
        ),
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
    if cfg.sequence is not None:
        metrics["sequence"] = seq_metrics
    use_fused = fused is not None and metrics["ranking"]["mode"] == RANKING_FUSED
    if use_fused and fused is not None:
        emb.artifacts.fused = fused.network

    final = emb.artifacts
    if cfg.refit_full and len(train_ev) < len(evs):
        full = _fit_embeddings(evs, cfg, settings, seed, steps, "embeddings (all events)")
        if cfg.sequence is not None:
            full.artifacts.sequence, refit = _fit_sequence(
                evs, full, cfg, settings, steps, "sequence model (all events)"
            )
            metrics["sequence"]["refit"] = refit
        ex_all, _ = replay(
            evs,
            full,
            cfg,
            interest,
            rng,
            steps,
            "replay (refit)",
            sequence=full.artifacts.sequence,
            **serving,
        )
        x_all = features(ex_all, full.artifacts)
        with steps.task("network (all events)", cfg.ranker.epochs) as adv:
            res_all = fit(x_all, ex_all.label, cfg.ranker, seed=seed, on_epoch=lambda *_: adv())
        full.artifacts.network = res_all.network
        if full.artifacts.sequence is not None and use_fused:
            x_fused = _with_sequence_feature(ex_all, x_all, full.artifacts)
            with steps.task("fused network (all events)", cfg.ranker.epochs) as adv:
                full.artifacts.fused = fit(
                    x_fused, ex_all.label, cfg.ranker, seed=seed, on_epoch=lambda *_: adv()
                ).network
        final = full.artifacts
        metrics["refit_full"] = {"events": len(evs), "items": len(final.item_ids)}
    metrics["items"] = len(final.item_ids)
    metrics["categories"] = len(final.categories) - 1
    metrics["users"] = len({e.user_id for e in evs})
    metrics["events"] = len(evs)
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    return TrainedModel(final, metrics, cfg)


def _with_epochs(cfg: TrainConfig, epochs: int) -> TrainConfig:
    return replace(cfg, ranker=replace(cfg.ranker, epochs=epochs))


def _fit_embeddings(
    events: Sequence[Event],
    cfg: TrainConfig,
    settings: Settings,
    seed: int,
    steps: Steps,
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


def _fit_sequence(
    events: Sequence[Event],
    stage: Stage,
    cfg: TrainConfig,
    settings: Settings,
    steps: Steps,
    label: str,
    *,
    cut: int | None = None,
) -> tuple[SequenceWeights, dict[str, Any]]:
    """The sequence model over the stage's catalog, item table initialised from its MF
    embeddings: fitted on the events at or before ``cut`` and validated on the later ones
    (all events and no validation when ``cut`` is None)."""
    seq = cfg.sequence
    assert seq is not None
    started = time.perf_counter()
    event_types = list(settings.event_weights)
    _, histories, targets = build_histories(events, stage.interactions.item_index, event_types)
    with steps.task(label, seq.epochs) as adv:
        weights, history = fit_sequence(
            histories,
            len(stage.artifacts.item_ids),
            event_types,
            seq,
            stage.artifacts.embeddings,
            cut=cut,
            targets=targets,
            on_epoch=lambda e, loss: adv(),
        )
    losses = history["loss"]
    out: dict[str, Any] = {
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "epochs": seq.epochs,
        "windows": history["windows"],
        "positions": history["positions"],
        "loss": seq.loss,
        "shape": {"length": seq.length, "dim": seq.dim, "blocks": seq.blocks, "heads": seq.heads},
        "items": len(stage.artifacts.item_ids),
        "fit_seconds": history["seconds"],
    }
    if cut is not None:
        out["validation"] = sequence_validation(
            weights, histories, cut, k=cfg.ranking_k, targets=targets
        )
    out["seconds"] = round(time.perf_counter() - started, 2)
    return weights, out


def _serving_options(settings: Settings) -> dict[str, Any]:
    """How the stream builds and ranks the union (the replay builds it the same way)."""
    return {
        "limit": int(getattr(settings, "candidate_limit", 200)),
        "policy": str(getattr(settings.purchased_policy, "value", settings.purchased_policy)),
        "trending_items": int(getattr(settings, "trending_items", 200)),
    }


def ranking_validation(
    groups: Sequence[RankGroup],
    network: DenseStack,
    art: ModelArtifacts,
    k: int,
    serving: dict[str, Any],
    *,
    fused: Fused | None = None,
) -> dict[str, Any]:
    """HR@k and NDCG@k of the network, the fused network (with a sequence model) and the
    blend on the validation window: the guard.

    Every target-like validation event of a known user is one list: the union serving would
    build at that moment (with this model's retrieval), ranked by each; an item outside the
    union is a miss for all. ``mode``: what ranks the union once exported, the best by HR@k
    then NDCG@k, a tie going to the simpler (blend, then network, then fused);
    ``use_network``: the mode is not the blend.
    """
    net_ranks: list[int] = []
    fused_ranks: list[int] = []
    blend_ranks: list[int] = []
    inside = [g for g in groups if g.pos >= 0]
    fused_p = fused.group_p if fused is not None else []
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
        bounds = np.cumsum(sizes)[:-1]
        p = network.predict(x)
        for g, part in zip(chunk, np.split(p, bounds), strict=True):
            net_ranks.append(rank_in(part, g, serving["policy"]))
            blend_ranks.append(g.blend_rank)
        if fused is not None:
            n_items = fused.n_items
            seq = np.concatenate(fused_p[start : start + 256])
            pf = fused.network.predict(fused_input(x, seq, n_items))
            for g, part in zip(chunk, np.split(pf, bounds), strict=True):
                fused_ranks.append(rank_in(part, g, serving["policy"]))
    out: dict[str, Any] = {
        "lists": len(groups),
        "item_in_union": len(inside),
        "k": k,
        "candidate_limit": serving["limit"],
    }
    ranked = [("network", net_ranks), ("blend", blend_ranks)]
    if fused is not None:
        ranked.append((RANKING_FUSED, fused_ranks))
    for name, ranks in ranked:
        r = np.asarray(ranks, np.int64)
        hit = r < k
        n = max(len(groups), 1)
        out[name] = {
            f"hr@{k}": float(hit.sum() / n),
            f"ndcg@{k}": float(np.sum(1.0 / np.log2(r[hit] + 2.0)) / n),
        }
    mode = RANKING_BLEND
    best = (out["blend"][f"hr@{k}"], out["blend"][f"ndcg@{k}"])
    for name in (RANKING_NETWORK, RANKING_FUSED):
        if name in out and len(groups) > 0:
            score = (out[name][f"hr@{k}"], out[name][f"ndcg@{k}"])
            if score > best:
                mode, best = name, score
    out["mode"] = mode
    out["use_network"] = mode != RANKING_BLEND
    out["rule"] = (
        f"the best of blend, network and fused network (with a sequence model) on the "
        f"validation window by HR@{k}, then NDCG@{k}, ties to the simpler, ranks the union "
        f"(metadata.json ranking)"
    )
    return out


@dataclass(slots=True)
class Fused:
    """The fused network fitted on the train split, with what the guard needs of it."""

    network: DenseStack
    n_items: int  # the sequence model's catalog (the feature's unit)
    x_va: np.ndarray  # its validation input
    p_tr: np.ndarray  # its predictions on the train split (the F1 threshold)
    group_p: list[np.ndarray]  # per validation list in the union, p(candidate | sequence)


def _with_sequence_feature(ex: Examples, x: np.ndarray, art: ModelArtifacts) -> np.ndarray:
    """``x`` with the sequence model's feature of each pair (0 for a cold or unknown item)."""
    assert art.sequence is not None
    items = np.where(ex.cold, -1, ex.item)
    p = pair_probabilities(art.sequence, ex.seq_items, ex.seq_types, ex.seq, items)
    return fused_input(x, p, art.sequence.n_items)


def _fit_fused(
    tr: Examples,
    va: Examples,
    x_tr: np.ndarray,
    x_va: np.ndarray,
    art: ModelArtifacts,
    groups: Sequence[RankGroup],
    cfg: TrainConfig,
    seed: int,
    steps: Steps,
) -> Fused:
    """The fused network on the train split (the sequence model's score as one more input)."""
    assert art.sequence is not None
    xf_tr = _with_sequence_feature(tr, x_tr, art)
    xf_va = _with_sequence_feature(va, x_va, art)
    with steps.task("fused network (train split)", cfg.ranker.epochs) as adv:
        res = fit(xf_tr, tr.label, cfg.ranker, seed=seed, on_epoch=lambda e, logs: adv())
    inside = [g for g in groups if g.pos >= 0]
    group_p = group_probabilities(art.sequence, tr.seq_items, tr.seq_types, inside)
    return Fused(res.network, art.sequence.n_items, xf_va, res.network.predict(xf_tr), group_p)


def _pop_auc(ex: Examples, art: ModelArtifacts) -> float:
    """AUC of popularity alone on the same pairs: the bar the network must clear."""
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
    steps: Steps,
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

    console = Console()
    rejected: dict[str, int] = {}
    with console.status("reading events"):
        evs = load_events(events, settings=settings, rejected=rejected)
    console.print(
        f"read {len(evs):,} events from {len(events)} file(s)"
        + (f"; rejected {sum(rejected.values()):,} {rejected}" if rejected else "")
    )
    cfg = TrainConfig(
        mf=MFConfig(dim=settings.embedding_dim), folds=folds, sequence=sequence_config(settings)
    )
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
    ranking = metrics.get("ranking") or {}
    k = ranking.get("k", 20)
    for name, label in (
        (RANKING_NETWORK, "network"),
        (RANKING_FUSED, "fused network"),
        (RANKING_BLEND, "blend"),
    ):
        if isinstance(ranking.get(name), dict):
            got = ranking[name]
            t.add_row(
                f"{label} HR@{k} / NDCG@{k} (union)",
                f"{got.get(f'hr@{k}', 0.0):.4f} / {got.get(f'ndcg@{k}', 0.0):.4f}",
                "",
            )
    if "mode" in ranking:
        t.add_row("ranks the union (the guard)", str(ranking["mode"]), "")
    seq_val = (metrics.get("sequence") or {}).get("validation")
    if seq_val:
        sk = seq_val.get("k", 20)
        t.add_row(f"sequence HR@{sk}", f"{seq_val[f'hr@{sk}']:.4f}", "")
        t.add_row(f"sequence NDCG@{sk}", f"{seq_val[f'ndcg@{sk}']:.4f}", "")
        pop = seq_val.get("popularity") or {}
        if pop:
            t.add_row(
                f"popularity HR@{sk} / NDCG@{sk} (catalog)",
                f"{pop[f'hr@{sk}']:.4f} / {pop[f'ndcg@{sk}']:.4f}",
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
