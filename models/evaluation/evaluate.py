"""``interest evaluate``: prequential (replay) evaluation of the production path and baselines.

Protocol (see /work/notes/EVAL.md for the long form):

1. Events are replayed in event-time order.  The cut is a *quantile* of event times
   (default 0.7), so a few outlying timestamps in a real log do not move it; every model
   (our MF + network, implicit's ALS) is trained only on events strictly before it.
2. Pre-cut events are shown to every method (``observe``) as warm-up, never evaluated.
3. After the cut, each *target* event (by default click, favorite, add_to_cart, purchase,
   and a browse of an item new to that user) of a user seen before is first ranked:
   every method is asked ``recommend(user, K, ts)`` and the target's rank is recorded;
   only then is the event passed to every method's ``observe``.
4. Leak check: a method may only return items the replay has already shown it.  An item
   whose first appearance is the target itself can only come from looking ahead, so it
   raises :class:`LeakError` (tests plant such a method and expect the error).

Memory: the pre-cut events are held (training needs them); post-cut events stream
through when the file is already in time order, otherwise the file is loaded and sorted.
Beyond that: one small state per user per method, the per-category trending maps, and one
rank per (target, method) as int16.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.data import iter_events, load_events
from models.evaluation.baselines import (
    CategoryPopularity,
    CategoryTrending,
    ImplicitALS,
    InterestStream,
    Method,
    MFStatic,
    Popularity,
    ProductionRanker,
    SequenceNext,
    UserItemStrength,
    reweighter,
)
from models.evaluation.metrics import (
    KS,
    bootstrap_ci,
    coverage,
    hit_curve,
    per_target,
    rank_of,
    summarize,
)
from models.training.embeddings import build_interactions
from models.training.train import TrainedModel, train
from stream.config import Settings, event_parser, interest_config, trend_config
from stream.core.decay import LONG, SHORT
from stream.core.errors import DataFormatError, LeakError, SettingsError
from stream.core.interest import category_strengths, fold, new_state
from stream.core.types import Event

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_TARGETS: tuple[str, ...] = ("click", "favorite", "add_to_cart", "purchase", "browse_new")
MAX_K = max(KS)
COVERAGE_K = 20
CI_METRICS = ("hr@20", "ndcg@20")
PAIRS: tuple[tuple[str, str], ...] = (  # paired differences reported (when both ran)
    ("interest-stream", "interest-stream:no-sequence"),
    ("interest-stream", "interest-stream:no-network"),
    ("interest-stream", "sequence"),
)
VALIDATION_QUANTILE = 0.85  # of pre-cut event times: the last 15% validate the tuning
DEFAULT_TRIALS = 16
BOOTSTRAP_RESAMPLES = 1000


# ----------------------------------------------------------------------------- data


@dataclass(slots=True)
class Split:
    """Pre-cut events (held, for training) and post-cut events (streamed when possible)."""

    pre: list[Event]
    post: Iterable[Event]
    cut_ts: int
    total: int
    time_ordered: bool


def cut_time(ts: np.ndarray, cut: float) -> int:
    """A quantile of event times when 0 < cut < 1, else cut itself as epoch ms."""
    if cut > 1:
        return int(cut)
    if not 0 < cut < 1:
        raise SettingsError(f"--cut: {cut} is neither a quantile in (0, 1) nor an epoch-ms time")
    return int(np.quantile(ts, cut))


def read_split(paths: Sequence[Path], settings: Settings, cut: float) -> Split:
    """Two passes: timestamps only (for the quantile), then the events themselves.

    A file already in time order is streamed on the second pass (only the pre-cut part is
    collected); otherwise every event is loaded and sorted (ties keep file order).
    """
    parser = event_parser(settings)
    ts = np.fromiter((e.ts for e in iter_events(paths, parser)), np.int64)
    if not len(ts):
        raise DataFormatError("no valid events in " + ", ".join(map(str, paths)))
    cut_ts = cut_time(ts, cut)
    ordered = bool(np.all(ts[1:] >= ts[:-1]))
    events: Iterator[Event] = (
        iter_events(paths, parser) if ordered else iter(load_events(paths, parser))
    )
    pre: list[Event] = []
    first_post: list[Event] = []
    for ev in events:
        if ev.ts >= cut_ts:
            first_post.append(ev)
            break
        pre.append(ev)
    if not pre:
        raise DataFormatError(f"--cut: no event before the cut ({cut_ts})")
    return Split(pre, itertools.chain(first_post, events), cut_ts, len(ts), ordered)


# ----------------------------------------------------------------------------- replay


@dataclass(slots=True)
class Replay:
    """One rank per (target, method), and what is needed to aggregate them afterwards."""

    names: list[str]
    users: list[int] = field(default_factory=list)  # target -> user index
    times: list[int] = field(default_factory=list)  # target -> event time
    reachable: list[bool] = field(default_factory=list)  # target item known to the model
    ranks: list[list[int]] = field(default_factory=list)  # target -> rank per method
    recommended: dict[str, set[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per method, recommend + observe
    user_index: dict[str, int] = field(default_factory=dict)
    items_seen: int = 0
    events: int = 0

    def rank_array(self, name: str) -> np.ndarray:
        col = self.names.index(name)
        return np.array([r[col] for r in self.ranks], np.int16).reshape(-1)


def is_target(event: Event, history: dict[str, set[str]], targets: frozenset[str]) -> bool:
    """A target type of a user seen before; ``browse_new``: a browse of an item new to them."""
    seen = history.get(event.user_id)
    if seen is None:
        return False
    if event.type in targets:
        return True
    return event.type == "browse" and "browse_new" in targets and event.item_id not in seen


def check_no_leak(name: str, ranked: Sequence[str], known: set[str], event: Event) -> None:
    """Every returned item must have appeared in an event already observed."""
    for item in ranked:
        if item not in known:
            raise LeakError(
                f"method {name!r} recommended item {item!r} to user {event.user_id!r} at "
                f"ts={event.ts} before any event with that item was observed: it looked ahead"
            )


def replay(
    events: Iterable[Event],
    methods: Sequence[Method],
    *,
    cut_ts: int,
    targets: Iterable[str] = DEFAULT_TARGETS,
    max_k: int = MAX_K,
    reachable: set[str] | frozenset[str] = frozenset(),
    listeners: Sequence[Callable[[Event], None]] = (),
    advance: Callable[[], None] | None = None,
) -> Replay:
    """The protocol, in one loop: rank every target with every method, *then* observe it.

    Methods only ever receive events through ``observe``, after any ranking the event is
    the target of, so the loop order is the leak guarantee; :func:`check_no_leak` verifies
    it for every list.  ``listeners`` see every event too but are not evaluated (plots).
    """
    wanted = frozenset(targets)
    names = [m.name for m in methods]
    result = Replay(names, recommended={n: set() for n in names}, seconds=dict.fromkeys(names, 0.0))
    clock = time.perf_counter
    history: dict[str, set[str]] = {}
    known: set[str] = set()
    for ev in events:
        if ev.ts >= cut_ts and is_target(ev, history, wanted):
            row = []
            for method in methods:
                t0 = clock()
                ranked = method.recommend(ev.user_id, max_k, ev.ts)
                result.seconds[method.name] += clock() - t0
                check_no_leak(method.name, ranked, known, ev)
                row.append(rank_of(ev.item_id, ranked))
                result.recommended[method.name].update(ranked[:COVERAGE_K])
            result.ranks.append(row)
            result.users.append(result.user_index.setdefault(ev.user_id, len(result.user_index)))
            result.times.append(ev.ts)
            result.reachable.append(ev.item_id in reachable)
        for method in methods:
            t0 = clock()
            method.observe(ev)
            result.seconds[method.name] += clock() - t0
        for listen in listeners:
            listen(ev)
        known.add(ev.item_id)
        history.setdefault(ev.user_id, set()).add(ev.item_id)
        result.events += 1
        if advance is not None:
            advance()
    result.items_seen = len(known)
    return result


def method_metrics(result: Replay, name: str, *, seed: int) -> dict[str, Any]:
    """The metrics.json entry of one method."""
    ranks = result.rank_array(name)
    users = np.asarray(result.users, np.int64)
    out: dict[str, Any] = summarize(ranks, KS)
    out["coverage"] = coverage(result.recommended[name], result.items_seen)
    out["targets"] = len(ranks)
    out["seconds"] = round(result.seconds.get(name, 0.0), 2)
    for key in CI_METRICS:
        metric, k = key.split("@")
        values = per_target(ranks, metric, int(k))
        ci = bootstrap_ci(values, users, resamples=BOOTSTRAP_RESAMPLES, seed=seed)
        out[f"{key}_ci"] = [ci[0], ci[1]]
    return out


def paired_differences(result: Replay, *, seed: int) -> dict[str, dict[str, Any]]:
    """``a - b`` of HR@20 / NDCG@20 on the same targets, for the PAIRS that both ran, with
    a 95% bootstrap CI resampling users (the same users in both: tighter than comparing two
    marginal intervals, which overlap even when one method wins on most users)."""
    users = np.asarray(result.users, np.int64)
    out: dict[str, dict[str, Any]] = {}
    for a, b in PAIRS:
        if a not in result.names or b not in result.names:
            continue
        entry: dict[str, Any] = {}
        for key in CI_METRICS:
            metric, k = key.split("@")
            diff = per_target(result.rank_array(a), metric, int(k)) - per_target(
                result.rank_array(b), metric, int(k)
            )
            ci = bootstrap_ci(diff, users, resamples=BOOTSTRAP_RESAMPLES, seed=seed)
            entry[key] = float(diff.mean()) if len(diff) else 0.0
            entry[f"{key}_ci"] = [ci[0], ci[1]]
        out[f"{a} - {b}"] = entry
    return out


# ----------------------------------------------------------------------------- methods


def stream_method(
    name: str,
    settings: Settings,
    scorer: Any,
    *,
    keep: tuple[bool, bool] = (True, True),
    reweight: Callable[[Event], Event] | None = None,
) -> InterestStream:
    """The production path: fold for the state, recommend_batch for the ranking."""
    config = interest_config(settings)
    ranker = ProductionRanker(
        scorer,
        trend_config(settings),
        policy=settings.purchased_policy.value,
        limit=getattr(settings, "candidate_limit", 200),
    )
    vectors = scorer.item_vectors if scorer is not None else None
    return InterestStream(
        name, config, vectors, ranker, keep=keep, reweight=reweight, on_observe=ranker.observe
    )


def build_methods(
    pre: Sequence[Event],
    model: TrainedModel,
    settings: Settings,
    *,
    seed: int,
    tuned: tuple[Settings, TrainedModel] | None = None,
) -> list[Method]:
    """Every method of one run; each starts empty and is warmed up by the replay itself.

    ``interest-stream`` is the fused production path (with a sequence model, its next
    items join the candidate union); when the model has one, ``interest-stream:no-sequence``
    (that source off) and ``sequence`` (the Transformer alone) show what the fusion adds.
    """
    scorer = model.scorer()
    config = interest_config(settings)
    art = model.artifacts
    methods: list[Method] = [
        stream_method("interest-stream", settings, scorer),
        stream_method("interest-stream:short-only", settings, scorer, keep=(True, False)),
        stream_method("interest-stream:long-only", settings, scorer, keep=(False, True)),
        stream_method("interest-stream:no-network", settings, None),
    ]
    if has_sequence_model(model):
        methods += [
            stream_method(
                "interest-stream:no-sequence", settings, without_sequence(model).scorer()
            ),
            SequenceNext(scorer, config.sequence_length),
        ]
    if tuned is not None:
        tuned_settings, tuned_model = tuned
        weights = reweighter(settings.event_weights, tuned_settings.event_weights)
        methods.append(
            stream_method(
                "interest-stream:tuned", tuned_settings, tuned_model.scorer(), reweight=weights
            )
        )
    mf = model.config.mf
    methods += [
        Popularity(settings.half_life_long_ms),
        CategoryPopularity(config),
        CategoryTrending(config),
        UserItemStrength(config),
        MFStatic(art.item_ids, art.embeddings),
        ImplicitALS(
            build_interactions(pre),
            factors=art.dim,
            regularization=mf.reg,
            alpha=mf.alpha,
            iterations=15,
            seed=seed,
        ),
    ]
    return methods


def has_sequence_model(model: TrainedModel) -> bool:
    """Whether training produced a sequence model (``ModelArtifacts.sequence``)."""
    return getattr(model.artifacts, "sequence", None) is not None


def without_sequence(model: TrainedModel) -> TrainedModel:
    """The same trained model without its sequence part: the fusion's ablation.

    No sequence model (so no ``next_in_sequence`` candidates) and no fused network: the
    plain network ranks the union if it beat the blend on the validation window (the guard
    as it was before the sequence model), else the blend. Same embeddings, retrieval and
    plain network, so the difference to ``interest-stream`` is the sequence model alone.
    """
    art = replace(model.artifacts, sequence=None)
    if hasattr(art, "fused"):
        art = replace(art, fused=None)
    ranking = dict(model.metrics.get("ranking") or {})
    k = ranking.get("k", 20)
    net, blend = ranking.get("network"), ranking.get("blend")
    if isinstance(net, dict) and isinstance(blend, dict):

        def key(m: dict[str, float]) -> tuple[float, float]:
            return (m.get(f"hr@{k}", 0.0), m.get(f"ndcg@{k}", 0.0))

        ranking["use_network"] = key(net) > key(blend)
        ranking["mode"] = "network" if ranking["use_network"] else "blend"
    return TrainedModel(art, {**model.metrics, "ranking": ranking}, model.config)


def fit_model(
    events: Sequence[Event],
    settings: Settings,
    *,
    seed: int,
    epochs: int | None,
    progress: Progress | None,
) -> TrainedModel:
    """Our MF + network on the given (pre-cut) events only."""
    return train(events, settings, seed=seed, epochs=epochs, progress=progress)


# ----------------------------------------------------------------------------- tuning


@dataclass(slots=True)
class Trial:
    overrides: dict[str, Any]
    hr20: float
    ndcg20: float
    targets: int


def sample_overrides(rng: np.random.Generator, settings: Settings) -> dict[str, Any]:
    """One random configuration: log-uniform half-lives, weights x 2**U(-2, 2) (browse = 1)."""
    minute, day = 60_000, 86_400_000
    short = int(math.exp(rng.uniform(math.log(5 * minute), math.log(12 * 60 * minute))))
    long = int(math.exp(rng.uniform(math.log(day), math.log(30 * day))))
    weights = {
        t: (1.0 if t == "browse" else round(float(w * 2.0 ** rng.uniform(-2, 2)), 3))
        for t, w in settings.event_weights.items()
    }
    return {"half_life_short_ms": short, "half_life_long_ms": long, "event_weights": weights}


def tune_settings(
    pre: Sequence[Event],
    settings: Settings,
    *,
    seed: int,
    trials: int,
    epochs: int | None,
    progress: Progress | None,
) -> tuple[dict[str, Any], list[Trial], int]:
    """Successive halving (defaults + seeded random configurations) on the last 15% of the
    pre-cut events, never the test window.

    Rung 1 scores every configuration on the first third of the validation window; the
    best quarter (and the defaults, for the comparison) go on to the whole window, which
    decides.  The validation model is trained once, on the events before the window, with
    the default settings: a trial changes the state side only (half-lives, the weights of
    the folded events), which is what a tuned.toml changes in a running worker.
    Returns the best overrides, the final-rung trials, and the validation start time.
    """
    ts = np.fromiter((e.ts for e in pre), np.int64)
    val_ts = int(np.quantile(ts, VALIDATION_QUANTILE))
    model = fit_model(
        [e for e in pre if e.ts < val_ts], settings, seed=seed, epochs=epochs, progress=progress
    )
    scorer = model.scorer()
    rng = np.random.default_rng(seed)
    configs = [{}] + [sample_overrides(rng, settings) for _ in range(max(0, trials - 1))]
    rung_end = int(np.quantile(ts[ts >= val_ts], 1 / 3))
    keep = max(1, len(configs) // 4)
    task = progress.add_task("tuning", total=len(configs) + keep + 1) if progress else None

    def score(overrides: dict[str, Any], end: int | None) -> Trial:
        trial = _trial(pre, settings, scorer, overrides, val_ts, end)
        if progress is not None and task is not None:
            progress.advance(task)
        return trial

    first = [score(c, rung_end) for c in configs]
    ranked = sorted(range(len(configs)), key=lambda n: (-first[n].hr20, -first[n].ndcg20, n))
    promoted = sorted({0, *ranked[:keep]})
    final = [score(configs[n], None) for n in promoted]
    best = max(final, key=lambda t: (t.hr20, t.ndcg20))
    return best.overrides, final, val_ts


def _trial(
    pre: Sequence[Event],
    settings: Settings,
    scorer: Any,
    overrides: dict[str, Any],
    val_ts: int,
    end: int | None,
) -> Trial:
    """One configuration's validation HR@20 / NDCG@20 through the same replay loop."""
    trial_settings = settings.model_copy(update=overrides)
    weights = reweighter(settings.event_weights, trial_settings.event_weights)
    method = stream_method("trial", trial_settings, scorer, reweight=weights)
    events = pre if end is None else [e for e in pre if e.ts < end]
    res = replay(events, [method], cut_ts=val_ts)
    m = summarize(res.rank_array("trial"), (20,))
    return Trial(overrides, m["hr@20"], m["ndcg@20"], len(res.ranks))


def write_tuned_toml(path: Path, settings: Settings, overrides: dict[str, Any]) -> None:
    """Top-level keys = Settings field names, so ``--config tuned.toml`` loads it."""
    short = overrides.get("half_life_short_ms", settings.half_life_short_ms)
    long = overrides.get("half_life_long_ms", settings.half_life_long_ms)
    weights = overrides.get("event_weights", settings.event_weights)
    table = ", ".join(f"{json.dumps(t)} = {float(w)!r}" for t, w in weights.items())
    path.write_text(
        "# written by `interest evaluate --tune`: best on the validation window\n"
        f"half_life_short_ms = {int(short)}\n"
        f"half_life_long_ms = {int(long)}\n"
        f"event_weights = {{ {table} }}\n"
    )


# ----------------------------------------------------------------------------- command


def evaluate_command(
    settings: Settings,
    events: list[Path],
    out_dir: Path,
    *,
    cut: float = 0.7,
    tune: bool = False,
    seed: int = 7,
    targets: Sequence[str] = DEFAULT_TARGETS,
    epochs: int | None = None,
    trials: int = DEFAULT_TRIALS,
    show_progress: bool = True,
    show_table: bool = True,
) -> dict[str, Any]:
    """Train on the pre-cut events, replay everything, write metrics.json, report.md, plots;
    print the results table (``show_table``) on stdout."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, quiet=not show_progress)
    split = read_split(events, settings, cut)
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, BarColumn(bar_width=None), console=console) as progress:
        tuning = None
        if tune:
            tuning = tune_settings(
                split.pre, settings, seed=seed, trials=trials, epochs=epochs, progress=progress
            )
        model = fit_model(split.pre, settings, seed=seed, epochs=epochs, progress=progress)
        tuned = None
        if tuning is not None:
            tuned_settings = settings.model_copy(update=tuning[0])
            tuned_model = fit_model(
                split.pre, tuned_settings, seed=seed, epochs=epochs, progress=progress
            )
            tuned = (tuned_settings, tuned_model)
        methods = build_methods(split.pre, model, settings, seed=seed, tuned=tuned)
        sample = SampleUser.pick(split.pre)
        task = progress.add_task("replay", total=split.total)
        result = replay(
            itertools.chain(split.pre, split.post),
            methods,
            cut_ts=split.cut_ts,
            targets=targets,
            reachable=set(model.artifacts.item_ids),
            listeners=[sample.observe],
            advance=lambda: progress.advance(task),
        )
    metrics = assemble(result, settings, split, cut=cut, seed=seed, targets=targets)
    if model.metrics.get("sequence") is not None:  # the sequence model's own validation
        metrics["sequence_model"] = model.metrics["sequence"]
    if model.metrics.get("ranking") is not None:  # what ranks the union, and why
        metrics["ranking_guard"] = model.metrics["ranking"]
    if tuning is not None:
        metrics["tuning"] = tuning_summary(*tuning, out_dir / "tuned.toml")
        write_tuned_toml(out_dir / "tuned.toml", settings, tuning[0])
    metrics["settings"]["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(out_dir, metrics, result, sample, settings)
    if show_table:
        Console().print(results_table(metrics))
    console.print(f"wrote {out_dir}/metrics.json, report.md and plots")
    return metrics


def results_table(metrics: dict[str, Any]) -> Any:
    """The methods' results as a rich Table, best HR@20 first, as in report.md."""
    from rich.table import Table

    s = metrics["settings"]
    table = Table(
        title=f"interest evaluate: {s['users_evaluated']} users, targets after the cut",
        title_justify="left",
    )
    table.add_column("method")
    for header in ("HR@20", "95% CI", "NDCG@20", "95% CI", "HR@10", "MRR@20", "targets"):
        table.add_column(header, justify="right")
    ordered = sorted(metrics["methods"].items(), key=lambda kv: -kv[1]["hr@20"])
    for name, m in ordered:
        table.add_row(
            name,
            f"{m['hr@20']:.3f}",
            _fmt_ci(m["hr@20_ci"]),
            f"{m['ndcg@20']:.3f}",
            _fmt_ci(m["ndcg@20_ci"]),
            f"{m['hr@10']:.3f}",
            f"{m['mrr@20']:.3f}",
            str(m["targets"]),
            style="bold" if name == "interest-stream" else None,
        )
    return table


def tuning_summary(
    best: dict[str, Any], trials: list[Trial], val_ts: int, path: Path
) -> dict[str, Any]:
    return {
        "validation_start_ms": val_ts,
        "best": best or "defaults",
        "toml": str(path),
        "trials": [
            {"overrides": t.overrides, "hr@20": t.hr20, "ndcg@20": t.ndcg20, "targets": t.targets}
            for t in trials
        ],
    }


def assemble(
    result: Replay,
    settings: Settings,
    split: Split,
    *,
    cut: float,
    seed: int,
    targets: Sequence[str],
) -> dict[str, Any]:
    """metrics.json: per-method metrics, reachable fraction, and how the run was set up."""
    methods = {name: method_metrics(result, name, seed=seed) for name in result.names}
    reach = float(np.mean(result.reachable)) if result.reachable else 0.0
    return {
        "methods": methods,
        "differences": paired_differences(result, seed=seed),
        "reachable_fraction": reach,
        "settings": {
            "cut": cut,
            "cut_ts_ms": split.cut_ts,
            "events": split.total,
            "pre_cut_events": len(split.pre),
            "file_time_ordered": split.time_ordered,
            "users_evaluated": len(result.user_index),
            "catalog_items": result.items_seen,
            "targets": list(targets),
            "ks": list(KS),
            "coverage_k": COVERAGE_K,
            "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
            "seed": seed,
            "half_life_short_ms": settings.half_life_short_ms,
            "half_life_long_ms": settings.half_life_long_ms,
            "event_weights": dict(settings.event_weights),
            "embedding_dim": settings.embedding_dim,
            "purchased_policy": settings.purchased_policy.value,
        },
    }


def hit_curves(result: Replay) -> dict[str, np.ndarray]:
    """HR@K for K = 1..MAX_K per method (the HR-against-K plot)."""
    return {name: hit_curve(result.rank_array(name), MAX_K) for name in result.names}


# ----------------------------------------------------------------------------- report


class SampleUser:
    """Records one user's events during the replay, for the interest-over-time plot."""

    def __init__(self, user_id: str | None) -> None:
        self.user_id = user_id
        self.events: list[Event] = []

    @classmethod
    def pick(cls, pre: Sequence[Event]) -> SampleUser:
        """The user with the most pre-cut events (the richest interest history)."""
        counts: dict[str, int] = {}
        for ev in pre:
            counts[ev.user_id] = counts.get(ev.user_id, 0) + 1
        return cls(max(counts, key=lambda u: (counts[u], u)) if counts else None)

    def observe(self, event: Event) -> None:
        if event.user_id == self.user_id:
            self.events.append(event)

    def curves(
        self, settings: Settings, points: int = 400, top: int = 4
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Times and S_c(t) per (horizon, category) of the user's strongest categories."""
        config = interest_config(settings)
        evs = self.events
        grid = np.linspace(evs[0].ts, evs[-1].ts, points).astype(np.int64)
        totals: dict[str, float] = {}
        for ev in evs:
            if ev.category is not None:
                totals[ev.category] = totals.get(ev.category, 0.0) + ev.weight
        cats = sorted(totals, key=lambda c: -totals[c])[:top]
        series = {f"{h}:{c}": np.zeros(points) for h in ("short", "long") for c in cats}
        state, n = new_state(self.user_id or "", config), 0
        for g, t in enumerate(grid):
            while n < len(evs) and evs[n].ts <= t:
                fold(state, [evs[n]], config)
                n += 1
            for h, horizon in (("short", SHORT), ("long", LONG)):
                strengths = category_strengths(state, horizon, int(t))
                for c in cats:
                    series[f"{h}:{c}"][g] = strengths.get(c, 0.0)
        return grid, series


def write_report(
    out_dir: Path, metrics: dict[str, Any], result: Replay, sample: SampleUser, settings: Settings
) -> None:
    """report.md and the three PNG plots."""
    (out_dir / "report.md").write_text(report_markdown(metrics))
    import matplotlib

    matplotlib.use("Agg")
    plot_hit_curves(out_dir / "hr_at_k.png", hit_curves(result))
    if sample.events:
        plot_sample_user(out_dir / "sample_user_interest.png", sample, settings)
    plot_by_time(out_dir / "hr20_by_time.png", result, metrics["settings"]["cut_ts_ms"])


def _fmt_ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def report_markdown(metrics: dict[str, Any]) -> str:
    """The results table plus the protocol's key numbers and caveats."""
    s = metrics["settings"]
    rows = [
        "| method | HR@10 | HR@20 (95% CI) | NDCG@20 (95% CI) | MRR@20 | HR@50 | coverage@20 |"
        " targets |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    ordered = sorted(metrics["methods"].items(), key=lambda kv: -kv[1]["hr@20"])
    for name, m in ordered:
        rows.append(
            f"| {name} | {m['hr@10']:.3f} | {m['hr@20']:.3f} {_fmt_ci(m['hr@20_ci'])} | "
            f"{m['ndcg@20']:.3f} {_fmt_ci(m['ndcg@20_ci'])} | {m['mrr@20']:.3f} | "
            f"{m['hr@50']:.3f} | {m['coverage']:.3f} | {m['targets']} |"
        )
    lines = [
        "# interest evaluate: offline replay",
        "",
        f"Cut at quantile {s['cut']} of event times (ts {s['cut_ts_ms']}); "
        f"{s['pre_cut_events']} of {s['events']} events before it train the models and warm "
        f"every method up. Targets after the cut: {', '.join(s['targets'])}; "
        f"{s['users_evaluated']} users evaluated. CIs: {s['bootstrap_resamples']} bootstrap "
        "resamples of users.",
        "",
        *rows,
        "",
        f"Reachable fraction: {metrics['reachable_fraction']:.3f} of the targets' items were "
        "known to the trained model (items first seen after the cut cannot be retrieved by "
        "model-based methods; the stream's own-items and trending sources can still reach them).",
    ]
    lines += _difference_lines(metrics)
    lines += _tuning_lines(metrics)
    lines += ["", "Plots: hr_at_k.png, sample_user_interest.png, hr20_by_time.png.", ""]
    return "\n".join(lines)


def _difference_lines(metrics: dict[str, Any]) -> list[str]:
    """Paired differences (same targets, users resampled), the guard's choice and the
    sequence model's own validation numbers, when they are there."""
    diffs = metrics.get("differences") or {}
    out: list[str] = []
    if diffs:
        out += [
            "",
            "## Paired differences",
            "",
            "Same targets for both methods; 95% CI from resampling users (an interval that "
            "excludes 0 is a difference the sample supports).",
            "",
            "| a - b | HR@20 (95% CI) | NDCG@20 (95% CI) |",
            "| --- | --- | --- |",
        ]
        for pair, d in diffs.items():
            out.append(
                f"| {pair} | {d['hr@20']:+.4f} {_fmt_ci4(d['hr@20_ci'])} | "
                f"{d['ndcg@20']:+.4f} {_fmt_ci4(d['ndcg@20_ci'])} |"
            )
    guard = metrics.get("ranking_guard") or {}
    k = guard.get("k", 20)
    shown = [
        f"{name} {guard[name][f'hr@{k}']:.4f}"
        for name in ("blend", "network", "fused")
        if isinstance(guard.get(name), dict) and f"hr@{k}" in guard[name]
    ]
    if shown:
        mode = guard.get("mode", "network" if guard.get("use_network", True) else "blend")
        out += [
            "",
            f"The guard: `{mode}` ranks the union of `interest-stream` (HR@{k} on the "
            f"training validation window: {', '.join(shown)}).",
        ]
    validation = (metrics.get("sequence_model") or {}).get("validation")
    if validation:
        shown = ", ".join(
            f"{key.upper()} {float(validation[key]):.4f}"
            for key in ("hr@20", "ndcg@20")
            if key in validation
        )
        out += [
            "",
            f"Sequence model, on its training validation window (next item of pre-cut "
            f"sequences): {shown}.",
        ]
    return out


def _fmt_ci4(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _tuning_lines(metrics: dict[str, Any]) -> list[str]:
    tuning = metrics.get("tuning")
    if not tuning:
        return []
    trials = tuning["trials"]
    default, best = trials[0], max(trials, key=lambda t: (t["hr@20"], t["ndcg@20"]))
    out = [
        "",
        "## Tuning",
        "",
        f"Successive halving; {len(trials)} finalists on the validation window from ts "
        f"{tuning['validation_start_ms']} to the cut (never the test window). Validation HR@20: "
        f"defaults {default['hr@20']:.3f}, best {best['hr@20']:.3f}. Best: `{tuning['best']}` "
        f"(written to tuned.toml).",
    ]
    test = metrics["methods"]
    if "interest-stream:tuned" in test:
        d, t = test["interest-stream"], test["interest-stream:tuned"]
        out.append(
            f"On the test window: defaults HR@20 {d['hr@20']:.3f} / NDCG@20 {d['ndcg@20']:.3f}, "
            f"tuned HR@20 {t['hr@20']:.3f} / NDCG@20 {t['ndcg@20']:.3f}."
        )
    return out


def _other_style(name: str, baseline: str, sequence: str) -> str:
    """Line style of a method that is not interest-stream: the sequence model stands out."""
    return sequence if name == "sequence" else baseline


def plot_hit_curves(path: Path, curves: dict[str, np.ndarray]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, curve in curves.items():
        style = "-" if name.startswith("interest-stream") else _other_style(name, "--", "-.")
        ax.plot(np.arange(1, len(curve) + 1), curve, style, label=name)
    ax.set_xlabel("K")
    ax.set_ylabel("HR@K")
    ax.set_title("Hit rate against list length (post-cut targets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sample_user(path: Path, sample: SampleUser, settings: Settings) -> None:
    import matplotlib.pyplot as plt

    grid, series = sample.curves(settings)
    hours = (grid - grid[0]) / 3_600_000
    fig, (ax_s, ax_l) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for key, values in series.items():
        horizon, cat = key.split(":", 1)
        (ax_s if horizon == "short" else ax_l).plot(hours, values, label=f"category {cat}")
    t0 = grid[0]
    for ax in (ax_s, ax_l):
        for ev in sample.events:
            ax.axvline((ev.ts - t0) / 3_600_000, color="grey", alpha=0.15, lw=0.6)
        ax.grid(alpha=0.3)
    ax_s.set_ylabel("short-horizon strength")
    ax_l.set_ylabel("long-horizon strength")
    ax_l.set_xlabel("hours since the user's first event (grey lines: events)")
    ax_s.set_title(f"User {sample.user_id}: category interest over event time")
    ax_s.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_buckets(times: np.ndarray, cut_ts: int) -> tuple[np.ndarray, str, float]:
    """Bucket index per target: days after the cut when the window spans >= 3 days, else hours.

    Returns (bucket per target, unit, bucket width in hours)."""
    span_h = float(times.max() - cut_ts) / 3_600_000 if len(times) else 0.0
    width_h, unit = (24.0, "day") if span_h >= 72 else (max(1.0, math.ceil(span_h / 12)), "hour")
    return ((times - cut_ts) // int(width_h * 3_600_000)).astype(np.int64), unit, width_h


def plot_by_time(path: Path, result: Replay, cut_ts: int) -> None:
    import matplotlib.pyplot as plt

    times = np.asarray(result.times, np.int64)
    fig, ax = plt.subplots(figsize=(9, 5))
    if len(times):
        bucket, unit, width = time_buckets(times, cut_ts)
        xs, counts = np.unique(bucket, return_counts=True)
        # x: the middle of each bucket, in the bucket's unit (days, or hours)
        step = width / 24 if unit == "day" else width
        mids = (xs + 0.5) * step
        counts_ax = ax.twinx()  # drawn first, under the lines
        counts_ax.bar(mids, counts, width=step * 0.8, color="grey", alpha=0.18)
        counts_ax.set_ylabel("targets in the bucket (grey bars)")
        for x, n in zip(mids, counts, strict=True):
            counts_ax.annotate(
                str(n), (x, n), ha="center", va="bottom", fontsize=7, color="dimgrey"
            )
        ax.set_zorder(counts_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        for name in result.names:
            hits = per_target(result.rank_array(name), "hr", 20)
            ys = [hits[bucket == b].mean() for b in xs]
            style = "-o" if name.startswith("interest-stream") else _other_style(name, "--.", "-.x")
            ax.plot(mids, ys, style, label=name, ms=4)
        size = "1 day" if unit == "day" else f"{width:g} h"
        ax.set_xlabel(f"{unit}s after the cut (points at the middle of {size} buckets)")
    ax.set_ylabel("HR@20 of the bucket's targets")
    ax.set_title("HR@20 over time after the cut")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = [
    "DEFAULT_TARGETS",
    "LeakError",
    "Replay",
    "Split",
    "build_methods",
    "check_no_leak",
    "cut_time",
    "evaluate_command",
    "has_sequence_model",
    "hit_curves",
    "is_target",
    "method_metrics",
    "paired_differences",
    "read_split",
    "replay",
    "tune_settings",
    "without_sequence",
    "write_tuned_toml",
]
