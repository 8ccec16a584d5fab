"""Online model serving: what the stream's rescoring calls (TensorFlow imported lazily).

* :class:`LocalScorer` runs the newest SavedModel version in-process (GPU when TensorFlow
  sees one) and hot-swaps newer versions;
* :class:`TFServingScorer` calls TensorFlow Serving's REST API with the same signatures;
* :class:`StaticScorer` wraps one model held in memory (offline evaluation).

All three implement :class:`stream.core.types.Scorer`; :func:`open_scorer` picks one.
"""

from __future__ import annotations

from pathlib import Path

from models.serving.local import LocalScorer
from models.serving.static import StaticScorer
from models.serving.tfserving import TFServingScorer
from stream.core.errors import ScorerError
from stream.core.types import Scorer

__all__ = ["LocalScorer", "StaticScorer", "TFServingScorer", "open_scorer"]

SCORERS = ("local", "tfserving")


def open_scorer(
    kind: str,
    model_dir: Path | None,
    *,
    poll_interval_s: float = 10.0,
    tfserving_url: str = "http://localhost:8501",
    tfserving_model_name: str = "interest",
    timeout_s: float = 2.0,
) -> Scorer:
    """The scorer of this kind (``local`` or ``tfserving``) over ``model_dir``."""
    if kind == "local":
        return LocalScorer(model_dir, poll_interval_s=poll_interval_s)
    if kind == "tfserving":
        return TFServingScorer(
            tfserving_url,
            tfserving_model_name,
            model_dir,
            timeout_s=timeout_s,
            poll_interval_s=poll_interval_s,
        )
    raise ScorerError(f"INTEREST_SCORER: unknown scorer {kind!r} (allowed: {', '.join(SCORERS)})")
