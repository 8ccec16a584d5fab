"""The versioned model directory, as serving reads it (numpy only, no TensorFlow).

Layout (TensorFlow Serving's: a base directory of integer version directories)::

    MODEL_DIR/
      1764331200/                 version = UTC epoch seconds at export, strictly increasing
        saved_model.pb, variables/   signatures `recommend`, `recommend_mask`, `score`
                                  (+ `next_items`, `next_scores`: versions with a sequence
                                  model, metadata.json "sequence")
        catalog.json              item ids, category per item, category index, popularity
        embeddings.npy            (N, d) float32 item embeddings: the stream builds user
                                  vectors from these without importing TensorFlow
        metadata.json             data fingerprint, settings (redacted), metrics, created time,
                                  ranking ("network" | "blend": the validation guard)

models.training.export writes it; everything here reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CATALOG_FILE = "catalog.json"
EMBEDDINGS_FILE = "embeddings.npy"
METADATA_FILE = "metadata.json"
FORMAT = 1
SIGNATURES = ("recommend", "recommend_mask", "score")  # every version
# the sequence model's (models.training.sequence): only versions whose metadata.json has
# "sequence"; inputs seq_items, seq_types int32 [B, L] right-aligned (-1: padding/unknown)
SEQUENCE_SIGNATURES = ("next_items", "next_scores")
SEQUENCE_KEY = "sequence"
OTHER_CATEGORY = "__other__"  # the last category slot: categories the model does not know
TRENDING_QUANTILE = 0.9  # items at or above this popularity quantile are "trending"
# metadata.json "ranking": what ranks the candidate union when this version is loaded.
# Training compares the network with the transparent blend on its validation window; the
# network is used only when it beat the blend there (the guard).
# "fused": the network with the sequence model's score as one more input (versions with a
# sequence model only; their `score` signature then takes the users' recent events too).
RANKING_NETWORK, RANKING_BLEND, RANKING_FUSED = "network", "blend", "fused"


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


@dataclass(frozen=True, slots=True)
class SequenceInfo:
    """metadata.json ``"sequence"``: what a client needs to feed ``next_items``.

    ``length``: the events per sequence the model reads (longer inputs: the last
    ``length`` columns); ``event_types``: the index space of ``seq_types``.
    """

    length: int
    event_types: list[str]
    dim: int = 0
    blocks: int = 0
    heads: int = 0
    signatures: tuple[str, ...] = SEQUENCE_SIGNATURES

    @classmethod
    def from_metadata(cls, meta: Any) -> SequenceInfo | None:
        """The version's sequence model, or None (no key: versions written before it; a
        malformed one: the version serves without its sequence model)."""
        raw = meta.get(SEQUENCE_KEY) if isinstance(meta, dict) else None
        if not isinstance(raw, dict):
            return None
        try:
            return cls(
                length=int(raw["length"]),
                event_types=[str(t) for t in raw.get("event_types", [])],
                dim=int(raw.get("dim", 0)),
                blocks=int(raw.get("blocks", 0)),
                heads=int(raw.get("heads", 0)),
                signatures=tuple(str(s) for s in raw.get("signatures", SEQUENCE_SIGNATURES)),
            )
        except (KeyError, TypeError, ValueError):
            return None


def version_signatures(meta: Any) -> tuple[str, ...]:
    """The signatures a version exports: SIGNATURES, plus SEQUENCE_SIGNATURES with a sequence."""
    info = SequenceInfo.from_metadata(meta)
    return SIGNATURES + (info.signatures if info is not None else ())


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


# ----------------------------------------------------------------------------- a loaded version


@dataclass(slots=True)
class ModelView:
    """The numpy side of one version: catalog, embeddings, lookups (no TensorFlow)."""

    version: str
    path: Path
    catalog: Catalog
    vectors: EmbeddingTable
    catalog_map: dict[str, str]
    item_names: list[str] = field(default_factory=list)
    item_category_names: list[str | None] = field(default_factory=list)
    trending: list[bool] = field(default_factory=list)  # popularity >= TRENDING_QUANTILE
    # the guard (metadata.json "ranking"): False when the network lost to the blend on
    # its validation window; stream.core.candidates then ranks with the blend
    network_ranking: bool = True
    # metadata.json "sequence": the version's sequence model (`next_items`, `next_scores`);
    # None for versions without one
    sequence: SequenceInfo | None = None
    # metadata.json ranking = "fused": `score` is the fused network (takes seq_items/types)
    fused: bool = False

    @property
    def signatures(self) -> tuple[str, ...]:
        return SIGNATURES + (self.sequence.signatures if self.sequence is not None else ())

    def __post_init__(self) -> None:
        cat = self.catalog
        pop = cat.popularity
        cut = float(np.quantile(pop, TRENDING_QUANTILE)) if len(pop) else 0.0
        self.item_names = list(cat.item_ids)
        self.item_category_names = [cat.category_of(n) for n in range(len(cat.item_ids))]
        self.trending = (pop >= cut).tolist()

    @classmethod
    def load(cls, version_dir: Path) -> ModelView:
        version_dir = Path(version_dir)
        cat = read_catalog(version_dir)
        meta = _metadata_or_empty(version_dir)
        return cls(
            version=version_dir.name,
            path=version_dir,
            catalog=cat,
            vectors=EmbeddingTable.load(version_dir, cat),
            catalog_map=cat.as_mapping(),
            network_ranking=meta.get("ranking") != RANKING_BLEND,
            sequence=(seq := SequenceInfo.from_metadata(meta)),
            fused=meta.get("ranking") == RANKING_FUSED and seq is not None,
        )


def _metadata_or_empty(version_dir: Path) -> dict[str, Any]:
    try:
        meta = read_metadata(version_dir)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}
