"""Scorer throughput: users scored per second by LocalScorer (CPU) vs a numpy baseline.

For catalogs of 10k and 100k items (d=64, K=20) and batch sizes 1..4096 (powers of 4) this
measures, in one run on the same machine:

* ``local``: LocalScorer.recommend on a ScoreBatch (encode + SavedModel `recommend` signature:
  inner-product retrieval over all items, top-50 candidates, the network on them, top-K;
  + decode into Recommended objects);
* ``signature``: the same signature called directly on ready tensors (no encode/decode);
* ``tf_retrieval``: retrieval only in TF (matmul + top_k), the work the baseline does;
* ``numpy``: the baseline, numpy matmul + argpartition + sort of the top K.

And the whole batch ranking of the stream (``stream.core.candidates.rank_batch``, what the
ranking process runs per rescoring batch) on user states folded from 10 random events each
over the model's catalog: ``blend`` without a model, ``network`` with the LocalScorer
(retrieval, the candidate union, the network over every candidate as one [B x C, F] call).

Ratios are against ``numpy``. The baseline does less work (no network, no category or
popularity terms, no exclusion, no Python objects), so ``tf_retrieval / numpy`` is the
like-for-like figure. Writes bench/results/scorer.json.

``sequence`` (also alone: ``--case sequence``, which writes bench/results/scorer_sequence.json):
users/s of the sequence model's ``next_items`` signature (models.training.sequence: 2
causal self-attention blocks, d = 32, 2 heads) called in-process on the loaded SavedModel,
B = 256 users with N = 50 events each, K = 20, catalogs of 10k and 100k items; repeated
(``--reps``, each at least ``min_s`` of back-to-back calls) and reported as median with the
range. ``full``: every user has 50 known events (the worst case); ``mixed``: 1-50 events
per user (uniform); ``local``: LocalScorer.next_in_sequence on the same users (ids -> indices,
the signature, decoding into Recommended). The device is whatever TensorFlow sees (the
output says whether a GPU was visible). Target: ``full`` >= 5,000 users/s at 10k items.

Run: ``python bench/bench_scorer.py [--quick] [--case all|scorer|sequence]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from models.serving import LocalScorer
from models.serving.codec import encode_batch
from models.training.export import export_version
from models.training.module import ModelArtifacts
from models.training.ranker import DenseStack, feature_names
from models.training.sequence import SequenceConfig, SequenceWeights, init_arrays
from stream.core.types import ScoreBatch

D, K, N_CAT = 64, 20, 1000
RESULTS = Path(__file__).resolve().parent / "results" / "scorer.json"
SEQUENCE_RESULTS = Path(__file__).resolve().parent / "results" / "scorer_sequence.json"
SEQ_B, SEQ_N = 256, 50  # users per call, events per user
SEQ_TYPES = ["browse", "click", "favorite", "add_to_cart", "purchase"]
SEQ_TARGET = 5_000.0  # users/s of `next_items` at B = 256, N = 50, 10k items, on the CPU


def artifacts(n_items: int, seed: int = 0) -> ModelArtifacts:
    """A model of the production shape with random weights (throughput does not care)."""
    rng = np.random.default_rng(seed)
    f = len(feature_names(D))
    sizes = [f, 64, 32, 1]
    net = DenseStack(
        [rng.normal(0, 0.1, (a, b)).astype(np.float32) for a, b in itertools.pairwise(sizes)],
        [np.zeros(b, np.float32) for b in sizes[1:]],
    )
    return ModelArtifacts(
        item_ids=[f"i{k}" for k in range(n_items)],
        item_categories=[f"c{k % N_CAT}" for k in range(n_items)],
        categories=[*(f"c{k}" for k in range(N_CAT)), "__other__"],
        popularity=rng.random(n_items).astype(np.float32) * 5,
        embeddings=rng.normal(0, 0.1, (n_items, D)).astype(np.float32),
        network=net,
        num_candidates=50,
        top_k=K,
    )


def batch(b: int, seed: int) -> ScoreBatch:
    rng = np.random.default_rng(seed)
    cats = []
    for _ in range(b):
        names = [f"c{int(c)}" for c in rng.integers(0, N_CAT, 10)]
        cats.append(
            ({c: float(rng.random()) for c in names[:3]}, {c: float(rng.random()) for c in names})
        )
    excl = [{f"i{int(i)}" for i in rng.integers(0, 1000, 5)} for _ in range(b)]
    return ScoreBatch(
        [f"u{n}" for n in range(b)], rng.normal(size=(b, 2, D)).astype(np.float32), cats, excl, K
    )


def rate(fn: Callable[[], object], users: int, min_s: float, max_reps: int = 200) -> float:
    """Users per second, best of repeated runs after one warm-up call."""
    fn()
    best, spent, reps = float("inf"), 0.0, 0
    while (spent < min_s or reps < 2) and reps < max_reps:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
        if dt > 5 * min_s:
            break
    return users / best


def ranking_rates(scorer: LocalScorer, n_items: int, b: int, min_s: float) -> dict[str, float]:
    """Users/s of rank_batch over ``b`` folded states: the blend, then with the network."""
    from stream.core.candidates import rank_batch
    from stream.core.interest import InterestConfig, fold, new_state
    from stream.core.types import Event

    rng = np.random.default_rng(b)
    vectors = scorer.item_vectors
    states = []
    for u in range(b):
        state = new_state(f"u{u}")
        items = rng.integers(0, n_items, 10).tolist()
        events = [
            Event(
                f"u{u}", f"i{i}", "click", 1_700_000_000_000 + n, f"{u}-{n}", f"c{i % N_CAT}", 1.0
            )
            for n, i in enumerate(items)
        ]
        fold(state, events, InterestConfig(), vectors=vectors)
        states.append(state)

    def run(with_model: bool) -> object:
        return rank_batch(
            states,
            trending={},
            global_top=[],
            scorer=scorer if with_model else None,
            k=K,
            policy="demote",
            limit=200,
        )

    return {
        "blend": rate(lambda: run(False), b, min_s),
        "network": rate(lambda: run(True), b, min_s),
    }


def numpy_topk(emb: np.ndarray, vec: np.ndarray) -> np.ndarray:
    scores = (vec[:, 0] + vec[:, 1]) @ emb.T
    part = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


def sequence_artifacts(n_items: int, seed: int = 0) -> ModelArtifacts:
    """:func:`artifacts` plus a sequence model of the default shape (random weights)."""
    art = artifacts(n_items, seed)
    cfg = SequenceConfig(length=SEQ_N, dim=32, blocks=2, heads=2, seed=seed)
    arrays = init_arrays(n_items, len(SEQ_TYPES), cfg, art.embeddings)
    arrays["item_bias"] = np.random.default_rng(seed).normal(0, 1, n_items).astype(np.float32)
    art.sequence = SequenceWeights(arrays, cfg.heads, SEQ_TYPES, cfg.length)
    return art


def sequence_inputs(n_items: int, mixed: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """B right-aligned sequences of N events (``mixed``: 1..N events, -1 front padding)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, (SEQ_B, SEQ_N)).astype(np.int32)
    kinds = rng.integers(0, len(SEQ_TYPES), (SEQ_B, SEQ_N)).astype(np.int32)
    if mixed:
        for r, n in enumerate(rng.integers(1, SEQ_N + 1, SEQ_B).tolist()):
            items[r, : SEQ_N - n] = -1
            kinds[r, : SEQ_N - n] = -1
    return {"seq_items": items, "seq_types": kinds, "k": np.full(SEQ_B, K, np.int32)}


def repeated(fn: Callable[[], object], users: int, reps: int, min_s: float) -> list[float]:
    """Users/s of ``reps`` runs, each back-to-back calls for at least ``min_s`` (after a
    warm-up call)."""
    fn()
    out = []
    for _ in range(reps):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            spent = time.perf_counter() - start
            if spent >= min_s:
                break
        out.append(users * calls / spent)
    return out


def spread(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {
        "median": round(float(np.median(v)), 1),
        "min": round(v[0], 1),
        "max": round(v[-1], 1),
        "runs": [round(x, 1) for x in values],
    }


def sequence_case(tmp: Path, sizes: list[int], reps: int, min_s: float) -> dict[str, object]:
    """Users/s of `next_items` at B = 256, N = 50 (see the module docstring)."""
    import tensorflow as tf

    from stream.core.sequence import RecentEvents
    from stream.core.types import SequenceBatch

    gpus = tf.config.list_physical_devices("GPU")
    device = "/GPU:0" if gpus else "/CPU:0"
    print(
        f"sequence: next_items at B={SEQ_B}, N={SEQ_N}, K={K} on {device} "
        f"({'a GPU is' if gpus else 'no GPU'} visible to TensorFlow)",
        flush=True,
    )
    rows = []
    for n_items in sizes:
        path = export_version(sequence_artifacts(n_items), tmp / f"seq{n_items}")
        with tf.device(device):
            loaded = tf.saved_model.load(str(path))
        sig = loaded.signatures["next_items"]
        row: dict[str, object] = {"items": n_items, "batch": SEQ_B, "events": SEQ_N, "k": K}
        for name, mixed in (("full", False), ("mixed", True)):
            x = {k: tf.constant(v) for k, v in sequence_inputs(n_items, mixed).items()}

            def call(x=x, sig=sig) -> object:
                with tf.device(device):
                    out = sig(**x)
                return out["items"].numpy(), out["scores"].numpy()

            row[name] = spread(repeated(call, SEQ_B, reps, min_s))
        scorer = LocalScorer(path.parent, watch=False)
        if hasattr(scorer, "next_in_sequence") and scorer._current.view.sequence is not None:
            x = sequence_inputs(n_items, mixed=False, seed=1)
            names = scorer._current.view.item_names
            seqs = [
                RecentEvents(
                    list(range(SEQ_N)),
                    [names[i] for i in r.tolist()],
                    [SEQ_TYPES[t] for t in t_row.tolist()],
                )
                for r, t_row in zip(x["seq_items"], x["seq_types"], strict=True)
            ]
            batch = SequenceBatch([f"u{n}" for n in range(SEQ_B)], seqs, K)
            run = scorer.next_in_sequence
            row["local"] = spread(repeated(lambda b=batch, run=run: run(b), SEQ_B, reps, min_s))
        scorer.close()
        rows.append(row)
        parts = [
            f"{name} {r['median']:>8.0f}/s [{r['min']:.0f}-{r['max']:.0f}]"
            for name, r in row.items()
            if isinstance(r, dict)
        ]
        print(f"sequence items={n_items:>7}  " + "  ".join(parts), flush=True)
    at_10k = [r for r in rows if r["items"] == 10_000]
    return {
        "device": device,
        "gpu_visible": bool(gpus),
        "cpus": os.cpu_count(),
        "reps": reps,
        "min_s_per_rep": min_s,
        "target": f"full >= {SEQ_TARGET:.0f} users/s at 10k items (B={SEQ_B}, N={SEQ_N})",
        "target_met": bool(at_10k) and all(r["full"]["median"] >= SEQ_TARGET for r in at_10k),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="LocalScorer throughput vs numpy baseline")
    ap.add_argument("--quick", action="store_true", help="fewer batch sizes, shorter timing")
    ap.add_argument(
        "--case",
        choices=("all", "scorer", "sequence"),
        default="all",
        help="all; the retrieval + network scorer only; the sequence model only",
    )
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the sequence case")
    args = ap.parse_args()
    import tensorflow as tf

    seq_sizes = [10_000, 100_000]
    if args.case == "sequence":
        with tempfile.TemporaryDirectory() as tmp:
            seq = sequence_case(Path(tmp), seq_sizes, max(args.reps, 3), 0.5 if args.quick else 1.0)
        seq["machine"] = {
            "platform": platform.platform(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        }
        SEQUENCE_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        SEQUENCE_RESULTS.write_text(json.dumps(seq, indent=1))
        print(
            f"sequence target ({seq['target']}) met: {seq['target_met']}; wrote {SEQUENCE_RESULTS}"
        )
        return

    sizes = [1, 16, 256, 1024] if args.quick else [4**p for p in range(7)]
    min_s = 0.2 if args.quick else 0.5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_items in (10_000, 100_000):
            art = artifacts(n_items)
            path = export_version(art, Path(tmp) / f"m{n_items}")
            scorer = LocalScorer(path.parent, watch=False)
            sig = scorer._current.run  # the signature on ready tensors
            emb_t = tf.constant(art.embeddings)

            @tf.function(reduce_retracing=True)
            def tf_retrieval(s, lo, emb=emb_t):
                return tf.math.top_k(tf.matmul(s + lo, emb, transpose_b=True), k=K).indices

            for b in sizes:
                sb = batch(b, seed=b)
                enc = encode_batch(sb, scorer._current.view)
                s, lo = tf.constant(sb.vectors[:, 0]), tf.constant(sb.vectors[:, 1])
                r = {
                    "local": rate(lambda sb=sb, sc=scorer: sc.recommend(sb), b, min_s),
                    "signature": rate(lambda enc=enc, f=sig: f(**enc), b, min_s),
                    "tf_retrieval": rate(lambda s=s, lo=lo: tf_retrieval(s, lo).numpy(), b, min_s),
                    "numpy": rate(
                        lambda sb=sb, e=art.embeddings: numpy_topk(e, sb.vectors), b, min_s
                    ),
                }
                row = {
                    "items": n_items,
                    "batch": b,
                    "users_per_s": {k: round(v, 1) for k, v in r.items()},
                    "ratio_local_vs_numpy": round(r["local"] / r["numpy"], 3),
                    "ratio_signature_vs_numpy": round(r["signature"] / r["numpy"], 3),
                    "ratio_tf_retrieval_vs_numpy": round(r["tf_retrieval"] / r["numpy"], 3),
                }
                if b in (256, 1024):
                    ranking = ranking_rates(scorer, n_items, b, min_s)
                    row["ranking_users_per_s"] = {k: round(v, 1) for k, v in ranking.items()}
                    print(
                        f"items={n_items:>7} batch={b:>5}  rank_batch: blend "
                        f"{ranking['blend']:>8.0f}/s  network {ranking['network']:>8.0f}/s",
                        flush=True,
                    )
                rows.append(row)
                print(
                    f"items={n_items:>7} batch={b:>5}  local={r['local']:>10.0f}/s  "
                    f"signature={r['signature']:>10.0f}/s  "
                    f"tf_retrieval={r['tf_retrieval']:>10.0f}/s  "
                    f"numpy={r['numpy']:>10.0f}/s  local/numpy={row['ratio_local_vs_numpy']:.2f}  "
                    f"retrieval/numpy={row['ratio_tf_retrieval_vs_numpy']:.2f}",
                    flush=True,
                )
            scorer.close()
        seq = (
            sequence_case(Path(tmp), seq_sizes, max(args.reps, 3), 0.5 if args.quick else 1.0)
            if args.case == "all"
            else None
        )
    big = [r for r in rows if r["batch"] >= 256]
    result = {
        "benchmark": "scorer",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
            "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        },
        "dim": D,
        "k": K,
        "candidates": 50,
        "categories": N_CAT,
        "target": "local >= numpy users/s at batch >= 256",
        "target_met": all(r["ratio_local_vs_numpy"] >= 1.0 for r in big),
        "retrieval_target_met": all(r["ratio_tf_retrieval_vs_numpy"] >= 1.0 for r in big),
        "rows": rows,
    }
    if seq is not None:
        result["sequence"] = seq
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(
        f"target (local >= numpy at batch >= 256) met: {result['target_met']}; "
        f"retrieval-only met: {result['retrieval_target_met']}; wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
