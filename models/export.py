"""The versioned model directory: one SavedModel, its catalog and its embeddings.

Layout (TensorFlow Serving's: a base directory of integer version directories)::

    MODEL_DIR/
      1764331200/                 version = UTC epoch seconds at export, strictly increasing
        saved_model.pb, variables/   signatures `recommend`, `recommend_mask`, `score`
        catalog.json              item ids, category per item, category index, popularity
        embeddings.npy            (N, d) float32 item embeddings: the stream builds user
                                  vectors from these without importing TensorFlow
        metadata.json             data fingerprint, settings (redacted), metrics, created time,
                                  ranking ("network" | "blend": the validation guard)

A version is written under a dot-named temporary directory and renamed into place, so a
watcher (the local scorer, TF Serving's file-system poller) never sees half a version.
Reading helpers (:func:`read_catalog`, :class:`EmbeddingTable`, :func:`list_versions`) use
numpy only; TensorFlow is imported only to build or save the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.embeddings import OTHER_CATEGORY
from models.ranker import DenseStack

CATALOG_FILE = "catalog.json"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "metadata.json"
FORMAT = 1
SIGNATURES = ("recommend", "recommend_mask", "score")
# metadata.json "ranking": what ranks the candidate union when this version is loaded.
# Training compares the network with the transparent blend on its validation window
# (metrics["ranking"]); the network is used only when it beat the blend there (the guard).
RANKING_NETWORK, RANKING_BLEND = "network", "blend"


def ranking_mode(metrics: Mapping[str, Any] | None) -> str:
    """RANKING_BLEND when the metrics record that the network lost to the blend, else network."""
    guard = (metrics or {}).get("ranking")
    if isinstance(guard, Mapping) and guard.get("use_network") is False:
        return RANKING_BLEND
    return RANKING_NETWORK


@dataclass(slots=True)
class ModelArtifacts:
    """Everything a version is built from (what training produces)."""

    item_ids: list[str]
    item_categories: list[str]  # category name per item
    categories: list[str]  # the model's category index; last entry is OTHER_CATEGORY
    popularity: np.ndarray  # (N,) float32 log1p(total engagement)
    embeddings: np.ndarray  # (N, d) float32
    network: DenseStack
    num_candidates: int = 50  # retrieval candidates re-ranked by the network
    top_k: int = 20
    category_weight: float = 1.0  # retrieval: weight of the user's share in the item's category
    popularity_weight: float = 0.01  # retrieval: tie-breaker towards popular items (cold users)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def item_category_index(self) -> np.ndarray:
        index = {c: n for n, c in enumerate(self.categories)}
        other = len(self.categories) - 1
        return np.array([index.get(c, other) for c in self.item_categories], np.int32)


# ----------------------------------------------------------------------------- the module


def build_module(art: ModelArtifacts):
    """A tf.Module with the three serving functions, traced for any batch size."""
    import tensorflow as tf

    from models.ranker import category_only_features, dense_apply, pair_feature_names, pair_features

    d = art.dim
    n_feat = len(pair_feature_names())
    n_cat = len(art.categories)
    emb = art.embeddings.astype(np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = emb / np.maximum(norms, 1e-6)
    pop = art.popularity.astype(np.float32)
    scales = np.array(
        [
            max(float(norms.mean()) if len(norms) else 1.0, 1e-6),
            max(float(pop.max(initial=0)), 1e-6),
        ],
        np.float32,
    )

    class InterestModel(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="interest_model")
            self.item_emb = tf.Variable(emb, trainable=False, name="item_emb")
            self.item_unit = tf.Variable(unit, trainable=False, name="item_unit")
            self.item_cat = tf.Variable(art.item_category_index(), trainable=False, name="item_cat")
            self.item_pop = tf.Variable(pop, trainable=False, name="item_pop")
            self.scales = tf.Variable(scales, trainable=False, name="scales")
            self.w = [tf.Variable(w, trainable=False) for w in art.network.weights]
            self.b = [tf.Variable(b, trainable=False) for b in art.network.biases]
            self.num_candidates = tf.constant(art.num_candidates, tf.int32)
            self.retrieval_w = tf.constant([art.category_weight, art.popularity_weight], tf.float32)

        def _net(self, short, long, items, feats):
            """Network scores (B, M) for item indices (B, M); outside [0, N): unknown item
            (zero embedding and popularity, scored from its per-pair features alone)."""
            n_items = tf.shape(self.item_emb)[0]
            known = (items >= 0) & (items < n_items)
            safe = tf.where(known, items, 0)
            x = tf.gather(self.item_emb, safe) * tf.cast(known, tf.float32)[..., None]
            pop = tf.gather(self.item_pop, safe) * tf.cast(known, tf.float32)
            feats = pair_features(short[:, None, :], long[:, None, :], x, pop, feats, self.scales)
            shape = tf.shape(feats)
            flat = tf.reshape(feats, [-1, shape[-1]])
            return tf.reshape(dense_apply(self.w, self.b, flat), shape[:-1])

        def _category_feats(self, cat_short, cat_long, items):
            """Per-pair features from the category strengths alone (retrieval re-ranking)."""
            cat = tf.gather(self.item_cat, items)
            return category_only_features(
                tf.gather(cat_short, cat, batch_dims=1),
                tf.gather(cat_long, cat, batch_dims=1),
                tf.reduce_sum(cat_short, axis=1, keepdims=True),
                tf.reduce_sum(cat_long, axis=1, keepdims=True),
            )

        def _retrieval(self, short, long, cat_short, cat_long):
            """Inner product of the users' unit vectors with unit item embeddings, plus
            the user's share in each item's category and a popularity tie-breaker."""
            s = short / tf.maximum(tf.norm(short, axis=1, keepdims=True), 1e-6)
            lo = long / tf.maximum(tf.norm(long, axis=1, keepdims=True), 1e-6)
            score = tf.matmul(s + lo, self.item_unit, transpose_b=True)
            share = cat_short / tf.maximum(tf.reduce_sum(cat_short, 1, keepdims=True), 1e-6)
            share += cat_long / tf.maximum(tf.reduce_sum(cat_long, 1, keepdims=True), 1e-6)
            # row gather on the transpose: 4x faster on CPU than gather(axis=1)
            score += self.retrieval_w[0] * tf.transpose(
                tf.gather(tf.transpose(share), self.item_cat)
            )
            pop = self.item_pop / self.scales[1]
            return score + self.retrieval_w[1] * pop[None, :]

        def _top(self, short, long, cat_short, cat_long, excluded, k):
            n_items = tf.shape(self.item_emb)[0]
            # k is per user (B,) so TF Serving's batcher can merge requests along dim 0;
            # the batch returns max(k) columns and each caller keeps its own k.
            k = tf.maximum(tf.reduce_max(tf.concat([k, [1]], 0)), 1)
            m = tf.minimum(tf.maximum(self.num_candidates, k), n_items)
            ret = self._retrieval(short, long, cat_short, cat_long)
            ret = tf.where(excluded, tf.constant(-np.inf, tf.float32), ret)
            cand = tf.math.top_k(ret, k=m, sorted=False)
            valid = cand.values > -np.inf
            feats = self._category_feats(cat_short, cat_long, cand.indices)
            p = self._net(short, long, cand.indices, feats)
            p = tf.where(valid, p, -1.0)
            best = tf.math.top_k(p, k=tf.minimum(k, m), sorted=True)
            items = tf.gather(cand.indices, best.indices, batch_dims=1)
            ok = best.values >= 0.0
            return {
                "items": tf.where(ok, items, -1),
                "scores": tf.where(ok, best.values, 0.0),
            }

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, d], tf.float32, name="short"),
                tf.TensorSpec([None, d], tf.float32, name="long"),
                tf.TensorSpec([None, n_cat], tf.float32, name="cat_short"),
                tf.TensorSpec([None, n_cat], tf.float32, name="cat_long"),
                tf.TensorSpec([None, None], tf.int32, name="exclude"),
                tf.TensorSpec([None], tf.int32, name="k"),
            ]
        )
        def recommend(self, short, long, cat_short, cat_long, exclude, k):
            """Top-k items; `exclude` lists item indices per user, padded with -1.

            Clients put -1 in column 0: TF Serving's batcher pads narrower requests with
            each tensor's first element, which must therefore be the "no item" value.
            """
            n_items = tf.shape(self.item_emb)[0]
            b = tf.shape(short)[0]
            ok = (exclude >= 0) & (exclude < n_items)
            where = tf.where(ok)
            cols = tf.cast(tf.gather_nd(exclude, where), tf.int64)
            pairs = tf.stack([where[:, 0], cols], axis=1)
            hits = tf.scatter_nd(
                pairs, tf.ones_like(cols, tf.float32), tf.cast([b, n_items], tf.int64)
            )
            return self._top(short, long, cat_short, cat_long, hits > 0.0, k)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, d], tf.float32, name="short"),
                tf.TensorSpec([None, d], tf.float32, name="long"),
                tf.TensorSpec([None, n_cat], tf.float32, name="cat_short"),
                tf.TensorSpec([None, n_cat], tf.float32, name="cat_long"),
                tf.TensorSpec([None, None], tf.bool, name="exclude"),
                tf.TensorSpec([None], tf.int32, name="k"),
            ]
        )
        def recommend_mask(self, short, long, cat_short, cat_long, exclude, k):
            """Top-k items; `exclude` is a (B, N) boolean mask over the model's items."""
            return self._top(short, long, cat_short, cat_long, exclude, k)

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, d], tf.float32, name="short"),
                tf.TensorSpec([None, d], tf.float32, name="long"),
                tf.TensorSpec([None, n_cat], tf.float32, name="cat_short"),
                tf.TensorSpec([None, n_cat], tf.float32, name="cat_long"),
                tf.TensorSpec([None, None], tf.int32, name="items"),
                tf.TensorSpec([None, None, n_feat], tf.float32, name="feats"),
            ]
        )
        def score(self, short, long, cat_short, cat_long, items, feats):
            """Network scores of candidates: item indices (-1 or out of range: unknown to
            the model) with their per-pair features (stream.candidates.FEATURE_NAMES).

            cat_short / cat_long are accepted for a uniform client but unused: the
            category strengths arrive in ``feats``, also for items the model lacks.
            """
            del cat_short, cat_long
            return {"scores": self._net(short, long, items, feats)}

    return InterestModel()


def signatures_of(module) -> dict[str, Any]:
    return {
        "recommend": module.recommend.get_concrete_function(),
        "recommend_mask": module.recommend_mask.get_concrete_function(),
        "score": module.score.get_concrete_function(),
        "serving_default": module.recommend.get_concrete_function(),
    }


# ----------------------------------------------------------------------------- writing


def export_version(
    art: ModelArtifacts,
    model_dir: Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    extra: Mapping[str, Any] | None = None,
    version: int | None = None,
) -> Path:
    """Write a complete version under MODEL_DIR and return its directory.

    The version number is the UTC epoch second, bumped past any existing version so
    versions strictly increase even for two exports in the same second.
    """
    import tensorflow as tf

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        module = build_module(art)
        tf.saved_model.save(module, str(tmp), signatures=signatures_of(module))
        write_catalog(tmp / CATALOG_FILE, art)
        np.save(tmp / EMBEDDINGS_FILE, art.embeddings.astype(np.float32))
        created = time.time()
        meta = {
            "format": FORMAT,
            "created_at": created,
            "created_at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "data_fingerprint": fingerprint,
            "settings": dict(settings or {}),
            "metrics": dict(metrics or {}),
            "items": len(art.item_ids),
            "categories": len(art.categories),
            "embedding_dim": art.dim,
            "num_candidates": art.num_candidates,
            "signatures": list(SIGNATURES),
            "ranking": ranking_mode(metrics),
            **dict(extra or {}),
        }
        return _publish(tmp, model_dir, meta, version)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, model_dir: Path, meta: dict[str, Any], version: int | None) -> Path:
    """Rename the finished temp dir to the next free integer version (atomic on POSIX)."""
    for _ in range(100):
        existing = list_versions(model_dir, complete_only=False)
        v = version or max(int(time.time()), (existing[-1] + 1) if existing else 0)
        if existing and v <= existing[-1]:
            raise ValueError(f"version {v} is not newer than existing version {existing[-1]}")
        meta["version"] = v
        _write_json(tmp / METADATA_FILE, meta)
        target = model_dir / str(v)
        try:
            os.rename(tmp, target)  # fails if target exists and is non-empty
            return target
        except OSError:
            if version is not None:
                raise
            continue
    raise RuntimeError(f"could not find a free version directory under {model_dir}")


def write_catalog(path: Path, art: ModelArtifacts) -> None:
    _write_json(
        path,
        {
            "format": FORMAT,
            "item_ids": list(art.item_ids),
            "item_categories": art.item_category_index().tolist(),
            "categories": list(art.categories),
            "popularity": [round(float(p), 6) for p in art.popularity],
            "embedding_dim": art.dim,
            "num_candidates": art.num_candidates,
            "top_k": art.top_k,
        },
    )


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def data_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the sorted input files' (name, size, content sha256)."""
    outer = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        inner = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(f"{p.name}\0{p.stat().st_size}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


# ----------------------------------------------------------------------------- reading


def list_versions(model_dir: Path | None, *, complete_only: bool = True) -> list[int]:
    """Integer version directories under MODEL_DIR, oldest first."""
    if model_dir is None or not Path(model_dir).is_dir():
        return []
    out = []
    for child in Path(model_dir).iterdir():
        if child.name.isdigit() and child.is_dir():
            if complete_only and not (child / "saved_model.pb").exists():
                continue
            out.append(int(child.name))
    return sorted(out)


def latest_version(model_dir: Path | None) -> int | None:
    versions = list_versions(model_dir)
    return versions[-1] if versions else None


@dataclass(slots=True)
class Catalog:
    """The items of one version: ids, categories, popularity, and lookups by id."""

    item_ids: list[str]
    item_cat: np.ndarray  # (N,) int32 index into categories
    categories: list[str]
    popularity: np.ndarray  # (N,) float32
    num_candidates: int
    top_k: int
    item_index: dict[str, int] = field(default_factory=dict)
    category_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.category_index = {c: n for n, c in enumerate(self.categories)}

    @property
    def other_slot(self) -> int:
        return self.category_index.get(OTHER_CATEGORY, len(self.categories) - 1)

    def category_of(self, index: int) -> str | None:
        name = self.categories[int(self.item_cat[index])]
        return None if name.startswith("__") else name

    def as_mapping(self) -> dict[str, str]:
        """item_id -> category (items without one left out), for Scorer.catalog."""
        out = {}
        for n, item in enumerate(self.item_ids):
            cat = self.category_of(n)
            if cat is not None:
                out[item] = cat
        return out


def read_catalog(version_dir: Path) -> Catalog:
    raw = json.loads((Path(version_dir) / CATALOG_FILE).read_text())
    return Catalog(
        item_ids=[str(i) for i in raw["item_ids"]],
        item_cat=np.asarray(raw["item_categories"], np.int32),
        categories=[str(c) for c in raw["categories"]],
        popularity=np.asarray(raw["popularity"], np.float32),
        num_candidates=int(raw.get("num_candidates", 50)),
        top_k=int(raw.get("top_k", 20)),
    )


def read_metadata(version_dir: Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / METADATA_FILE).read_text())


class EmbeddingTable:
    """The core's ItemVectors protocol over a version's embeddings.npy (numpy only)."""

    __slots__ = ("_index", "dim", "matrix", "version")

    def __init__(self, version: str, item_ids: Sequence[str], matrix: np.ndarray) -> None:
        self.version = str(version)
        self.matrix = np.ascontiguousarray(matrix, np.float32)
        self.dim = int(self.matrix.shape[1])
        self._index = {i: n for n, i in enumerate(item_ids)}

    @classmethod
    def load(cls, version_dir: Path, catalog: Catalog | None = None) -> EmbeddingTable:
        version_dir = Path(version_dir)
        cat = catalog or read_catalog(version_dir)
        return cls(version_dir.name, cat.item_ids, np.load(version_dir / EMBEDDINGS_FILE))

    def get(self, item_id: str) -> np.ndarray | None:
        n = self._index.get(item_id)
        return None if n is None else self.matrix[n]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def __len__(self) -> int:
        return len(self._index)
