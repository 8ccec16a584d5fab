"""The exported SavedModel: signatures, exclusion, round trip, version directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.serving.model_dir import (
    EmbeddingTable,
    latest_version,
    list_versions,
    read_catalog,
    read_metadata,
)
from models.training.export import data_fingerprint, export_version
from models.training.module import ModelArtifacts, build_module
from tests.support.models import N_CAT, D, N, toy_artifacts


def inputs(b: int, seed: int = 1, k: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "short": rng.normal(size=(b, D)).astype(np.float32),
        "long": rng.normal(size=(b, D)).astype(np.float32),
        "cat_short": rng.random((b, N_CAT + 1)).astype(np.float32),
        "cat_long": rng.random((b, N_CAT + 1)).astype(np.float32),
        "exclude": np.full((b, 1), -1, np.int32),
        "k": np.full(b, k, np.int32),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelArtifacts, Path]:
    art = toy_artifacts()
    base = tmp_path_factory.mktemp("models")
    return art, export_version(
        art, base, metrics={"auc": 0.7}, settings={"top_k": 5}, fingerprint="abc"
    )


@pytest.fixture(scope="module")
def loaded(exported: tuple[ModelArtifacts, Path]):
    import tensorflow as tf

    return tf.saved_model.load(str(exported[1]))


def call(fn, **kw: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in kw.items()}).items()}


def test_recommend_signature_shapes_dtypes_and_range(loaded) -> None:
    sig = loaded.signatures["recommend"]
    specs = sig.structured_input_signature[1]
    assert {k: (tuple(v.shape.as_list()), v.dtype.name) for k, v in specs.items()} == {
        "short": ((None, D), "float32"),
        "long": ((None, D), "float32"),
        "cat_short": ((None, N_CAT + 1), "float32"),
        "cat_long": ((None, N_CAT + 1), "float32"),
        "exclude": ((None, None), "int32"),
        "k": ((None,), "int32"),
    }
    out = call(sig, **inputs(7))
    assert out["items"].shape == (7, 5) and out["items"].dtype == np.int32
    assert out["scores"].shape == (7, 5) and out["scores"].dtype == np.float32
    assert np.all((out["scores"] >= 0) & (out["scores"] <= 1))
    assert np.all((out["items"] >= 0) & (out["items"] < N))
    assert np.all(np.diff(out["scores"], axis=1) <= 0)  # best first
    assert all(len(set(row)) == 5 for row in out["items"])


def category_feats(args: dict[str, np.ndarray], items: np.ndarray) -> np.ndarray:
    """The per-pair features `recommend` uses for re-ranking: category columns only."""
    from stream.core.features import FEATURE_NAMES

    cat = np.array([k % N_CAT for k in range(N)])[items]
    cs = np.take_along_axis(args["cat_short"], cat, axis=1)
    cl = np.take_along_axis(args["cat_long"], cat, axis=1)
    ts = args["cat_short"].sum(1, keepdims=True)
    tl = args["cat_long"].sum(1, keepdims=True)
    cols = {
        "log1p_cat_short": np.log1p(cs),
        "log1p_cat_long": np.log1p(cl),
        "cat_short_share": cs / ts,
        "cat_long_share": cl / tl,
    }
    zeros = np.zeros(items.shape, np.float32)
    return np.stack([cols.get(n, zeros) for n in FEATURE_NAMES], axis=-1).astype(np.float32)


def test_score_signature_shapes_and_agreement(loaded) -> None:
    from stream.core.features import N_FEATURES

    rec = call(loaded.signatures["recommend"], **inputs(4))
    args = {k: v for k, v in inputs(4).items() if k not in ("exclude", "k")}
    feats = category_feats(args, rec["items"])
    out = call(loaded.signatures["score"], **args, items=rec["items"], feats=feats)
    assert out["scores"].shape == (4, 5) and out["scores"].dtype == np.float32
    np.testing.assert_allclose(out["scores"], rec["scores"], rtol=1e-5, atol=1e-6)
    # items the model lacks (-1 or out of range) are scored from their features alone
    odd = np.array([[-1, N, 3]] * 4, np.int32)
    f = np.random.default_rng(2).random((4, 3, N_FEATURES)).astype(np.float32)
    f[:, 1] = f[:, 0]
    bad = call(loaded.signatures["score"], **args, items=odd, feats=f)["scores"]
    assert np.all((bad > 0) & (bad < 1))
    np.testing.assert_allclose(bad[:, 0], bad[:, 1], rtol=1e-6)


def test_excluded_items_never_returned(loaded) -> None:
    rng = np.random.default_rng(3)
    b = 6
    excl = np.full((b, 1 + 90), -1, np.int32)
    for r in range(b):
        excl[r, 1:] = rng.choice(N, 90, replace=False)
    x = inputs(b, k=40) | {"exclude": excl}
    out = call(loaded.signatures["recommend"], **x)
    for r in range(b):
        got = set(out["items"][r][out["items"][r] >= 0].tolist())
        assert not got & set(excl[r].tolist())
        assert len(got) == 30  # 120 items - 90 excluded, all still reachable
    assert np.all(out["scores"][out["items"] < 0] == 0)
    # the boolean-mask signature agrees
    mask = np.zeros((b, N), bool)
    for r in range(b):
        mask[r, excl[r, 1:]] = True
    out2 = call(loaded.signatures["recommend_mask"], **(x | {"exclude": mask}))
    np.testing.assert_array_equal(out["items"], out2["items"])


def test_everything_excluded_returns_padding(loaded) -> None:
    x = inputs(2) | {"exclude": np.tile(np.arange(-1, N, dtype=np.int32), (2, 1))}
    out = call(loaded.signatures["recommend"], **x)
    assert np.all(out["items"] == -1) and np.all(out["scores"] == 0)


def test_cold_user_gets_items(loaded) -> None:
    x = inputs(1) | {k: np.zeros_like(v) for k, v in inputs(1).items() if k != "k"}
    x["exclude"] = np.full((1, 1), -1, np.int32)
    out = call(loaded.signatures["recommend"], **x)
    assert np.all(out["items"] >= 0) and np.all(np.isfinite(out["scores"]))


def test_round_trip_same_outputs(exported, loaded) -> None:
    art, _ = exported
    module = build_module(art)
    x = inputs(5, seed=9)
    before = {k: v.numpy() for k, v in module.recommend(**x).items()}
    after = call(loaded.signatures["recommend"], **x)
    np.testing.assert_array_equal(before["items"], after["items"])
    np.testing.assert_allclose(before["scores"], after["scores"], rtol=1e-6)


def test_version_directory_contents(exported) -> None:
    art, path = exported
    assert path.name.isdigit()
    assert {p.name for p in path.iterdir()} >= {
        "saved_model.pb",
        "variables",
        "catalog.json",
        "embeddings.npy",
        "metadata.json",
    }
    cat = read_catalog(path)
    assert cat.item_ids == art.item_ids and cat.categories[-1] == "__other__"
    assert cat.category_of(7) == "c1"
    table = EmbeddingTable.load(path)
    assert table.version == path.name and table.dim == D
    np.testing.assert_array_equal(table.get("i3"), art.embeddings[3])
    assert table.get("nope") is None
    meta = read_metadata(path)
    assert meta["version"] == int(path.name) and meta["data_fingerprint"] == "abc"
    assert meta["metrics"]["auc"] == 0.7 and meta["settings"]["top_k"] == 5


def test_versions_increase_and_temp_dirs_are_invisible(tmp_path: Path) -> None:
    (tmp_path / "99999999999").mkdir()  # incomplete: no saved_model.pb
    (tmp_path / ".tmp-x").mkdir()
    assert list_versions(tmp_path) == []
    (tmp_path / "99999999999" / "saved_model.pb").write_bytes(b"")
    art = toy_artifacts(n=30)
    v = export_version(art, tmp_path)
    assert int(v.name) == 100000000000  # bumped past the existing (future) version
    assert latest_version(tmp_path) == int(v.name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == [".tmp-x"]


def test_data_fingerprint_depends_on_content_not_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("1,2\n")
    b.write_text("3,4\n")
    f1 = data_fingerprint([a, b])
    assert f1 == data_fingerprint([b, a]) and len(f1) == 64
    b.write_text("3,5\n")
    assert data_fingerprint([a, b]) != f1
    json.dumps(f1)


def test_metadata_records_the_ranking_guard(exported, tmp_path: Path) -> None:
    from models.serving.model_dir import RANKING_BLEND, RANKING_NETWORK
    from models.training.export import ranking_mode

    assert read_metadata(exported[1])["ranking"] == RANKING_NETWORK  # no guard recorded
    assert ranking_mode({"ranking": {"use_network": True}}) == RANKING_NETWORK
    path = export_version(toy_artifacts(), tmp_path, metrics={"ranking": {"use_network": False}})
    assert read_metadata(path)["ranking"] == RANKING_BLEND


def test_the_replay_runs_the_exported_retrieval_in_numpy() -> None:
    """One retrieval function, two backends: the module's (TensorFlow, so TF Serving) and the
    training replay's (numpy) agree on scores and on the top items."""
    from models.training.module import item_scales, retrieval_scores
    from models.training.replay import Retriever, best_first

    art = toy_artifacts(seed=4)
    module = build_module(art)
    x = inputs(6, seed=3)
    tf_scores = module._retrieval(x["short"], x["long"], x["cat_short"], x["cat_long"]).numpy()
    r = Retriever(art, 20)
    np_scores = retrieval_scores(
        np,
        x["short"],
        x["long"],
        x["cat_short"],
        x["cat_long"],
        r.unit,
        r.item_cat,
        r.pop_scaled,
        *r.weights,
    )
    np.testing.assert_allclose(np_scores, tf_scores, rtol=1e-5, atol=1e-5)
    for row in range(6):
        assert set(best_first(np_scores[row], 10)) == set(np.argsort(-tf_scores[row])[:10])
    assert item_scales(art)[1] > 0


def test_the_split_first_layer_is_the_trained_network(loaded, exported) -> None:
    """The served network (first layer in item, user and pair parts) scores exactly what
    the network of training scores on the concatenated pair features."""
    import tensorflow as tf

    from models.training.module import item_scales
    from models.training.ranker import dense_apply, pair_features
    from stream.core.features import N_FEATURES

    art = exported[0]
    rng = np.random.default_rng(5)
    b, m = 6, 9
    args = {k: v for k, v in inputs(b, seed=3).items() if k not in ("exclude", "k")}
    items = rng.integers(-1, N + 2, (b, m)).astype(np.int32)  # unknown ones included
    feats = rng.random((b, m, N_FEATURES)).astype(np.float32)
    served = call(loaded.signatures["score"], **args, items=items, feats=feats)["scores"]
    known = (items >= 0) & (items < N)
    x = np.where(known[..., None], art.embeddings[np.where(known, items, 0)], 0).astype(np.float32)
    pop = np.where(known, art.popularity[np.where(known, items, 0)], 0).astype(np.float32)
    pairs = pair_features(
        tf.constant(args["short"])[:, None, :],
        tf.constant(args["long"])[:, None, :],
        tf.constant(x),
        tf.constant(pop),
        tf.constant(feats),
        tf.constant(item_scales(art)),
    )
    flat = tf.reshape(pairs, [b * m, -1])
    trained = dense_apply(art.network.weights, art.network.biases, flat).numpy().reshape(b, m)
    np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-6)
