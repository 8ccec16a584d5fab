"""A scorer over one model held in memory (no directory, no reload): offline evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from models.serving.codec import (
    decode_candidates,
    decode_next,
    decode_result,
    empty_result,
    encode_batch,
    encode_candidates,
    encode_sequences,
)
from models.serving.model_dir import EmbeddingTable, ModelView
from stream.core.types import CandidateBatch, Recommended, ScoreBatch, SequenceBatch


class StaticScorer:
    """A Scorer over one in-memory model (no directory, no reload): offline evaluation."""

    def __init__(
        self,
        view: ModelView,
        run: Callable[..., Mapping[str, Any]],
        run_next: Callable[..., Mapping[str, Any]] | None = None,
    ) -> None:
        self._view = view
        self._run = run
        self._run_next = run_next  # the `next_items` signature, when the model has one

    @property
    def model_version(self) -> str | None:
        return self._view.version

    @property
    def item_vectors(self) -> EmbeddingTable | None:
        return self._view.vectors

    @property
    def catalog(self) -> Mapping[str, str]:
        return self._view.catalog_map

    @property
    def network_ranking(self) -> bool:
        """The guard: rank with the network (True) or the blend (metadata "ranking")."""
        return self._view.network_ranking

    def refresh(self) -> None:
        """In memory: nothing to reach."""

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]:
        if not batch.user_ids:
            return []
        res = self._run(**encode_batch(batch, self._view))
        return decode_result(batch, self._view, res["items"], res["scores"])

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]:
        """Network scores per candidate (the `score` signature), aligned with batch.items."""
        if not batch.user_ids:
            return []
        res = self._run(**encode_candidates(batch, self._view))
        return decode_candidates(batch, res["scores"])

    def next_in_sequence(self, batch: SequenceBatch) -> list[list[Recommended]]:
        """The sequence model's next items (the `next_items` signature); none without one."""
        if not batch.user_ids or self._run_next is None or self._view.sequence is None:
            return empty_result(batch)
        res = self._run_next(**encode_sequences(batch, self._view))
        return decode_next(batch, self._view, res["items"], res["scores"])

    def close(self) -> None:
        pass
