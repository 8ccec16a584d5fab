"""The sequence model: learning, leak-freedom, the exported signatures, training's report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from models.serving.model_dir import (
    SEQUENCE_SIGNATURES,
    SIGNATURES,
    ModelView,
    read_metadata,
    version_signatures,
)
from models.training.export import export_version
from models.training.module import ModelArtifacts, build_module, signatures_of
from models.training.sequence import (
    SequenceConfig,
    SequenceWeights,
    build_histories,
    build_sequence_model,
    fit_sequence,
    head_from,
    init_arrays,
    next_scores,
    sequence_validation,
    training_windows,
)
from stream.core.types import Event
from tests.support.models import N, toy_artifacts
from tests.unit.models.training.test_train import synthetic_events

TYPES = ["browse", "click", "purchase"]
LENGTH = 8
TINY = SequenceConfig(length=LENGTH, dim=16, blocks=1, heads=2, epochs=12, batch_size=32)


def chains(users: int, per_user: int, n_items: int, seed: int = 0) -> list[list[tuple]]:
    """Each user walks a chain from a random item: the next item is the previous one + 1."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(users):
        start = int(rng.integers(0, n_items))
        out.append(
            [
                ((start + n) % n_items, int(rng.integers(0, 2)), 1_000 * n + u)
                for n in range(per_user)
            ]
        )
    return out


def category_events(users: int, per_user: int, seed: int = 0) -> list[Event]:
    """Users that stick to one of 4 categories of 10 items (test_train's synthetic data)."""
    return synthetic_events(users, per_user, seed)


def call(fn, **kw: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in kw.items()}).items()}


# ----------------------------------------------------------------------------- learning


def test_learns_a_chain_far_above_popularity() -> None:
    n_items = 80
    hist = chains(70, 24, n_items)
    cut = 16_000  # each user's first 17 events train, the later 7 validate
    mf = np.random.default_rng(1).normal(size=(n_items, 8)).astype(np.float32)  # narrower
    weights, history = fit_sequence(hist, n_items, TYPES, TINY, mf, cut=cut)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    val = sequence_validation(weights, hist, cut)
    assert val["targets"] > 100 and val["item_known"] == val["targets"]
    assert val["hr@20"] > 0.9, val
    assert val["hr@20"] > val["popularity"]["hr@20"] + 0.5
    assert val["ndcg@20"] > val["popularity"]["ndcg@20"] + 0.4
    assert weights.arrays["item_emb"].shape == (n_items, TINY.dim)


def test_windows_are_right_aligned_and_every_event_a_target_once() -> None:
    hist = [[(n, 0, n) for n in range(12)], [(5, 1, 1)], [(-1, 0, 1), (3, 0, 2), (4, 2, 3)]]
    items, types, nxt = training_windows(hist, 5)
    # user 0: 12 events -> targets 1..11 in windows of 5 inputs; user 1: none; user 2: 3 -> 4
    assert sorted(nxt[nxt >= 0].tolist()) == sorted([*range(1, 12), 4])
    for row_i, row_n in zip(items, nxt, strict=True):
        known = np.flatnonzero(row_i >= 0)
        assert known.size and known[-1] == 4 and np.all(np.diff(known) == 1)  # packed right
        assert np.all(row_n[row_i < 0] == -1)
    last = items[np.argmax(nxt[:, -1] == 11)]
    assert last.tolist() == [6, 7, 8, 9, 10]
    assert types[nxt[:, -1] == 4].tolist() == [[-1, -1, -1, -1, 0]]


def test_validation_targets_follow_the_ranking_rule() -> None:
    t0 = 1_700_000_000_000
    events = [
        Event("u", "a", "browse", t0, "1", None, 1.0),
        Event("u", "b", "browse", t0 + 10, "2", None, 1.0),
        Event("u", "a", "browse", t0 + 20, "3", None, 1.0),  # repeat browse: no target
        Event("u", "a", "purchase", t0 + 30, "4", None, 8.0),  # repeat, not a browse: target
        Event("v", "c", "browse", t0 + 40, "5", None, 1.0),  # first event of v: no target
        Event("v", "zz", "click", t0 + 50, "6", None, 2.0),  # unknown item: a miss
    ]
    users, hist, targets = build_histories(events, {"a": 0, "b": 1, "c": 2}, TYPES)
    assert users == ["u", "v"]
    assert hist[1] == [(2, 0, t0 + 40), (-1, 1, t0 + 50)]
    assert targets == [[False, True, False, True], [False, True]]
    weights = SequenceWeights(init_arrays(3, len(TYPES), TINY), TINY.heads, TYPES, LENGTH)
    val = sequence_validation(weights, hist, t0 + 5, targets=targets)
    assert val["targets"] == 3 and val["item_known"] == 2
    assert val["hr@20"] == pytest.approx(2 / 3)  # 3 items: every known one is in the top 20


# ----------------------------------------------------------------------------- leak-freedom


def test_events_after_the_cut_never_reach_the_weights() -> None:
    n_items = 30
    late = n_items - 1  # an item every user follows 0 with, only after the cut
    hist = chains(40, 16, n_items - 1, seed=3)
    cut = max(t for h in hist for (_, _, t) in h)
    after = [(late if n % 2 else 0, 1, cut + 10 * n + 1) for n in range(8)]
    full = [[*h, *after] for h in hist]
    cfg = dataclasses.replace(TINY, epochs=6)
    with_cut, _ = fit_sequence(full, n_items, TYPES, cfg, None, cut=cut)
    before, _ = fit_sequence(hist, n_items, TYPES, cfg, None)
    for name, arr in before.arrays.items():
        np.testing.assert_allclose(with_cut.arrays[name], arr, rtol=1e-5, atol=1e-6, err_msg=name)
    # the successor it would have learnt after the cut is not what it predicts after 0
    import tensorflow as tf

    head = head_from(with_cut)
    seq = np.array([[n_items - 3, n_items - 2, 0]], np.int32)
    kinds = np.zeros_like(seq)
    p = next_scores(head, tf.constant(seq), tf.constant(kinds), tf.constant([[1, late]]))
    p = p["scores"].numpy()[0]
    assert p[1] < p[0]
    # ... which it does learn when the later events are not held out (the test can fail)
    leaky, _ = fit_sequence(full, n_items, TYPES, cfg, None)
    q = next_scores(head_from(leaky), tf.constant(seq), tf.constant(kinds), tf.constant([[late]]))
    assert q["scores"].numpy()[0, 0] > 3 * p[1]


# ----------------------------------------------------------------------------- the export


def seq_artifacts(n: int = N, seed: int = 0) -> ModelArtifacts:
    cfg = dataclasses.replace(TINY, blocks=2, seed=seed)
    art = toy_artifacts(seed, n)
    arrays = init_arrays(n, len(TYPES), cfg, art.embeddings)
    rng = np.random.default_rng(seed)
    arrays["item_bias"] = rng.normal(0, 1, n).astype(np.float32)  # distinct scores
    art.sequence = SequenceWeights(arrays, cfg.heads, TYPES, LENGTH)
    return art


def seq_inputs(b: int, seed: int = 5, width: int = LENGTH) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, N, (b, width)).astype(np.int32)
    kinds = rng.integers(0, len(TYPES), (b, width)).astype(np.int32)
    for r in range(b):  # some front padding, different per row
        items[r, : r % width] = -1
        kinds[r, : r % width] = -1
    return {"seq_items": items, "seq_types": kinds}


@pytest.fixture(scope="module")
def exported_seq(tmp_path_factory: pytest.TempPathFactory):
    import tensorflow as tf

    art = seq_artifacts()
    path = export_version(art, tmp_path_factory.mktemp("seq-models"), metrics={})
    return art, path, build_module(art), tf.saved_model.load(str(path))


def test_version_records_the_sequence_model(exported_seq) -> None:
    _, path, _, loaded = exported_seq
    meta = read_metadata(path)
    assert meta["sequence"]["length"] == LENGTH and meta["sequence"]["event_types"] == TYPES
    assert meta["sequence"]["dim"] == TINY.dim and meta["sequence"]["blocks"] == 2
    assert meta["sequence"]["heads"] == TINY.heads
    assert meta["signatures"] == [*SIGNATURES, *SEQUENCE_SIGNATURES]
    assert version_signatures(meta) == SIGNATURES + SEQUENCE_SIGNATURES
    view = ModelView.load(path)
    assert view.sequence is not None and view.sequence.length == LENGTH
    assert view.sequence.event_types == TYPES
    assert set(SEQUENCE_SIGNATURES) <= set(loaded.signatures)
    sig = loaded.signatures["next_items"]
    specs = sig.structured_input_signature[1]
    assert {k: (tuple(v.shape.as_list()), v.dtype.name) for k, v in specs.items()} == {
        "seq_items": ((None, None), "int32"),
        "seq_types": ((None, None), "int32"),
        "k": ((None,), "int32"),
    }
    specs = loaded.signatures["next_scores"].structured_input_signature[1]
    assert specs["items"].shape.as_list() == [None, None]


def test_a_version_without_sequence_has_none(tmp_path: Path) -> None:
    art = toy_artifacts()
    path = export_version(art, tmp_path, metrics={})
    meta = read_metadata(path)
    assert "sequence" not in meta and meta["signatures"] == list(SIGNATURES)
    assert ModelView.load(path).sequence is None
    module = build_module(art)
    assert not hasattr(module, "next_items") and set(signatures_of(module)) == {
        *SIGNATURES,
        "serving_default",
    }


def test_save_reload_same_outputs(exported_seq) -> None:
    _, _, module, loaded = exported_seq
    x = seq_inputs(7)
    k = np.array([3, 5, 1, 5, 2, 4, 5], np.int32)
    mem = call(module.next_items, **x, k=k)
    disk = call(loaded.signatures["next_items"], **x, k=k)
    assert mem["items"].shape == (7, 5) and mem["items"].dtype == np.int32
    assert mem["scores"].dtype == np.float32
    np.testing.assert_array_equal(mem["items"], disk["items"])
    np.testing.assert_allclose(mem["scores"], disk["scores"], rtol=1e-6, atol=1e-7)
    cand = np.array([[0, 5, -1, N + 3]] * 7, np.int32)
    mem_s = call(module.next_scores, **x, items=cand)["scores"]
    disk_s = call(loaded.signatures["next_scores"], **x, items=cand)["scores"]
    np.testing.assert_allclose(mem_s, disk_s, rtol=1e-6, atol=1e-7)
    assert np.all(mem_s[:, 2:] == 0.0) and np.all(mem_s[:, :2] > 0.0)


def test_next_items_are_a_distribution_best_first(exported_seq) -> None:
    _, _, _, loaded = exported_seq
    x = seq_inputs(4)
    out = call(loaded.signatures["next_items"], **x, k=np.full(4, N + 10, np.int32))
    assert out["items"].shape == (4, N)  # at most the catalog
    assert np.all(np.diff(out["scores"], axis=1) <= 0)
    assert np.all((out["scores"] >= 0) & (out["scores"] <= 1))
    np.testing.assert_allclose(out["scores"].sum(axis=1), 1.0, rtol=1e-4)
    assert all(sorted(row) == list(range(N)) for row in out["items"].tolist())


def test_next_scores_of_the_returned_items_are_their_scores(exported_seq) -> None:
    _, _, _, loaded = exported_seq
    x = seq_inputs(6)
    top = call(loaded.signatures["next_items"], **x, k=np.full(6, 10, np.int32))
    again = call(loaded.signatures["next_scores"], **x, items=top["items"])
    np.testing.assert_allclose(again["scores"], top["scores"], rtol=1e-5, atol=1e-7)


def test_top_k_blocked_is_top_k() -> None:
    import tensorflow as tf

    from models.training.sequence import TOP_BLOCK, top_k_blocked

    rng = np.random.default_rng(4)
    logits = np.round(rng.normal(size=(6, 40 * TOP_BLOCK)), 1).astype(np.float32)  # many ties
    logits[1] = 0.0  # all tied
    logits[2, 100:] = -np.inf  # a padded tail
    for k in (1, 3, 10):
        want = tf.math.top_k(tf.constant(logits), k=k)
        values, indices = top_k_blocked(tf.constant(logits), tf.constant(k))
        np.testing.assert_array_equal(indices.numpy(), want.indices.numpy())
        np.testing.assert_array_equal(values.numpy(), want.values.numpy())


@pytest.mark.parametrize("k", [1, 2, 7])  # N = 120 (128 padded): k <= 2 takes the blocked path
def test_next_items_rank_next_scores_over_the_catalog(exported_seq, k: int) -> None:
    _, _, _, loaded = exported_seq
    x = seq_inputs(5)
    top = call(loaded.signatures["next_items"], **x, k=np.full(5, k, np.int32))
    every = np.tile(np.arange(N, dtype=np.int32), (5, 1))
    p = call(loaded.signatures["next_scores"], **x, items=every)["scores"]
    np.testing.assert_array_equal(top["items"], np.argsort(-p, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-4)


def test_right_alignment_padding_and_unknown_items(exported_seq) -> None:
    _, _, _, loaded = exported_seq
    fn = loaded.signatures["next_items"]

    def top(items: list[list[int]], kinds: list[list[int]]) -> dict[str, np.ndarray]:
        return call(
            fn,
            seq_items=np.array(items, np.int32),
            seq_types=np.array(kinds, np.int32),
            k=np.full(len(items), 5, np.int32),
        )

    base = top([[-1] * 5 + [4, 9, 2]], [[-1] * 5 + [0, 1, 2]])
    short = top([[4, 9, 2]], [[0, 1, 2]])  # narrower: front-padded
    wide = top([[-1] * 20 + [4, 9, 2]], [[-1] * 20 + [0, 1, 2]])  # wider: last LENGTH used
    unknown = top([[-1] * 3 + [4, -1, 9, -1, 2]], [[-1] * 3 + [0, 1, 1, 2, 2]])
    for other in (short, wide, unknown):
        np.testing.assert_array_equal(other["items"], base["items"])
        np.testing.assert_allclose(other["scores"], base["scores"], rtol=1e-5)
    # only the newest LENGTH events count; the order matters; an empty user gets nothing
    long = list(range(20, 32))
    np.testing.assert_array_equal(
        top([long], [[0] * 12])["items"], top([long[-LENGTH:]], [[0] * LENGTH])["items"]
    )
    assert not np.array_equal(top([[2, 9, 4]], [[2, 1, 0]])["items"], base["items"])
    empty = top([[-1] * LENGTH, [N + 5] + [-1] * (LENGTH - 1)], [[0] * LENGTH, [1] * LENGTH])
    assert np.all(empty["items"] == -1) and np.all(empty["scores"] == 0.0)
    batch = top([[-1] * 5 + [4, 9, 2], [-1] * LENGTH], [[-1] * 5 + [0, 1, 2], [0] * LENGTH])
    np.testing.assert_array_equal(batch["items"][0], base["items"][0])  # rows independent


def test_serving_path_equals_the_training_forward() -> None:
    import tensorflow as tf

    cfg = dataclasses.replace(TINY, blocks=2)
    arrays = init_arrays(40, len(TYPES), cfg)
    model = build_sequence_model(40, len(TYPES), cfg, arrays=arrays)
    items = np.array([[-1, -1, 3, 7, 1, 0, 9, 2], [5, 6, 7, 8, 9, 10, 11, 12]], np.int32)
    kinds = np.where(items >= 0, 1, -1).astype(np.int32)
    h = model.outputs(tf.constant(items), tf.constant(kinds)).numpy()[:, -1]
    want = h @ arrays["item_emb"].T + arrays["item_bias"]
    got, ok = model.logits_last(tf.constant(items), tf.constant(kinds))
    assert ok.numpy().all()
    assert got.shape[1] % 16 == 0 and np.all(got.numpy()[:, 40:] == -np.inf)  # padding
    np.testing.assert_allclose(got.numpy()[:, :40], want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- training


def test_train_reports_and_exports_the_sequence_model(tmp_path: Path) -> None:
    from models.training.embeddings import MFConfig
    from models.training.ranker import RankerConfig
    from models.training.train import TrainConfig, sequence_config, summary_table, train
    from stream.config import Settings

    settings = Settings(sequence_length=12, sequence_dim=16, sequence_heads=2, sequence_blocks=1)
    seq = sequence_config(settings, epochs=3)
    assert seq is not None and (seq.length, seq.dim, seq.blocks) == (12, 16, 1)
    assert sequence_config(Settings(sequence_length=0)) is None
    cfg = TrainConfig(
        mf=MFConfig(dim=8, iterations=4),
        ranker=RankerConfig(hidden=(16,), epochs=1),
        sequence=seq,
    )
    model = train(category_events(16, 20), settings, seed=3, config=cfg)
    m = model.metrics["sequence"]
    val = m["validation"]
    assert val["targets"] == model.metrics["ranking"]["lists"]  # the same target events
    assert 0.0 <= val["ndcg@20"] <= val["hr@20"] <= 1.0
    assert m["train_loss_last"] < m["train_loss_first"] and "refit" in m
    art = model.artifacts
    assert art.sequence is not None and art.sequence.n_items == len(art.item_ids)  # refit
    assert art.sequence.event_types == list(settings.event_weights)
    path = model.export(tmp_path, settings=settings)
    assert ModelView.load(path).sequence.length == 12
    assert json.loads((path / "metadata.json").read_text())["sequence"]["blocks"] == 1
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(summary_table(model.metrics, path))
    text = console.export_text()
    assert "sequence HR@20" in text and "sequence NDCG@20" in text
    # the in-memory scorer reaches the same signature
    scorer = model.scorer()
    assert scorer._view.sequence is not None and scorer._run_next is not None
