"""A small random model for tests: enough for shapes, masks and round trips."""

from __future__ import annotations

import numpy as np

from models.training.module import ModelArtifacts
from models.training.ranker import DenseStack, feature_names
from models.training.sequence import SequenceConfig, SequenceWeights, init_arrays

N, D, N_CAT = 120, 8, 6


TYPES = ["browse", "click", "favorite", "add_to_cart", "purchase"]


def toy_sequence(n: int = N, length: int = 8, seed: int = 0) -> SequenceWeights:
    """A small random sequence model (one block, d = 8) over ``n`` items."""
    config = SequenceConfig(length=length, dim=8, blocks=1, heads=2, seed=seed)
    return SequenceWeights(init_arrays(n, len(TYPES), config), 2, list(TYPES), length)


def toy_network(rng: np.random.Generator, inputs: int) -> DenseStack:
    return DenseStack(
        [
            rng.normal(0, 0.3, (inputs, 16)).astype(np.float32),
            rng.normal(0, 0.3, (16, 1)).astype(np.float32),
        ],
        [np.zeros(16, np.float32), np.zeros(1, np.float32)],
    )


def toy_artifacts(
    seed: int = 0, n: int = N, sequence: bool = False, fused: bool = False
) -> ModelArtifacts:
    """A small random model (random MLP; with ``sequence``, a random sequence model too;
    with ``fused`` as well, a random fused network): enough for shapes, masks and round
    trips."""
    rng = np.random.default_rng(seed)
    f = len(feature_names(D))
    net = toy_network(rng, f)
    return ModelArtifacts(
        item_ids=[f"i{k}" for k in range(n)],
        item_categories=[f"c{k % N_CAT}" for k in range(n)],
        categories=[*(f"c{k}" for k in range(N_CAT)), "__other__"],
        popularity=rng.random(n).astype(np.float32) * 3,
        embeddings=rng.normal(size=(n, D)).astype(np.float32),
        network=net,
        num_candidates=20,
        top_k=5,
        sequence=toy_sequence(n, seed=seed) if sequence or fused else None,
        fused=toy_network(rng, f + 1) if fused else None,
    )
