"""A small random model for tests: enough for shapes, masks and round trips."""

from __future__ import annotations

import numpy as np

from models.training.module import ModelArtifacts
from models.training.ranker import DenseStack, feature_names

N, D, N_CAT = 120, 8, 6


def toy_artifacts(seed: int = 0, n: int = N) -> ModelArtifacts:
    """A small random model (random MLP): enough for shapes, masks and round trips."""
    rng = np.random.default_rng(seed)
    f = len(feature_names(D))
    net = DenseStack(
        [
            rng.normal(0, 0.3, (f, 16)).astype(np.float32),
            rng.normal(0, 0.3, (16, 1)).astype(np.float32),
        ],
        [np.zeros(16, np.float32), np.zeros(1, np.float32)],
    )
    return ModelArtifacts(
        item_ids=[f"i{k}" for k in range(n)],
        item_categories=[f"c{k % N_CAT}" for k in range(n)],
        categories=[*(f"c{k}" for k in range(N_CAT)), "__other__"],
        popularity=rng.random(n).astype(np.float32) * 3,
        embeddings=rng.normal(size=(n, D)).astype(np.float32),
        network=net,
        num_candidates=20,
        top_k=5,
    )
