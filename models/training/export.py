"""Writing a model version: one SavedModel, its catalog, its embeddings, its metadata.

A version with a sequence model (``ModelArtifacts.sequence``) also exports the
``next_items`` / ``next_scores`` signatures and records metadata.json ``"sequence"``
(length, event types, shape, signatures).

The layout is models.serving.model_dir's (TensorFlow Serving's: integer version
directories under one base path).

A version is written under a dot-named temporary directory and renamed into place, so a
watcher (the local scorer, TF Serving's file-system poller) never sees half a version.
Reading is models.serving.model_dir's (numpy only); TensorFlow is imported only to save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.serving.model_dir import (
    CATALOG_FILE,
    EMBEDDINGS_FILE,
    FORMAT,
    METADATA_FILE,
    RANKING_BLEND,
    RANKING_FUSED,
    RANKING_NETWORK,
    SEQUENCE_KEY,
    SEQUENCE_SIGNATURES,
    SIGNATURES,
    list_versions,
)
from models.training.module import ModelArtifacts, build_module, signatures_of


def ranking_mode(metrics: Mapping[str, Any] | None, fused: bool = False) -> str:
    """RANKING_BLEND when the metrics record that the network lost to the blend; else
    RANKING_FUSED for a version exported with its fused network, else RANKING_NETWORK."""
    guard = (metrics or {}).get("ranking")
    if isinstance(guard, Mapping) and guard.get("use_network") is False:
        return RANKING_BLEND
    return RANKING_FUSED if fused else RANKING_NETWORK


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
            "ranking": ranking_mode(
                metrics, fused=art.fused is not None and art.sequence is not None
            ),
            **dict(extra or {}),
        }
        if art.sequence is not None:
            # models.serving.model_dir.SequenceInfo reads it; absent: no sequence model
            meta["signatures"] = [*SIGNATURES, *SEQUENCE_SIGNATURES]
            meta[SEQUENCE_KEY] = {
                **art.sequence.info(),
                "signatures": list(SEQUENCE_SIGNATURES),
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
