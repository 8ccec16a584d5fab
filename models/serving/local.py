"""The in-process scorer: the newest SavedModel version, hot-swapped without stopping.

TensorFlow is imported only when a version is loaded (or the device is asked for), so a
worker without a model never imports it. On a machine without a GPU, TensorFlow's start-up
lines about CUDA (``failed call to cuInit``, ``Could not find cuda drivers``) and its other
informational start-up lines are kept out of the log; with a GPU configured, or with the
``interest.scorer`` logger at DEBUG, they all show (see :func:`import_tensorflow`).

A call takes one reference to the loaded version at its start and finishes on it, so a swap
never mixes two versions in one batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    no_scores,
    split,
)
from models.serving.model_dir import EmbeddingTable, ModelView, list_versions
from stream.core.errors import ScorerError
from stream.core.sequence import RecentEvents
from stream.core.types import CandidateBatch, Recommended, ScoreBatch, SequenceBatch

log = logging.getLogger("interest.scorer")


@dataclass(slots=True)
class _Loaded:
    view: ModelView
    module: Any  # keeps the restored object (and its variables) alive
    run: Callable[..., Mapping[str, Any]]
    run_score: Callable[..., Mapping[str, Any]]
    run_next: Callable[..., Mapping[str, Any]] | None  # `next_items`: versions with a sequence


class LocalScorer:
    """In-process SavedModel scorer with hot reload of newer version directories."""

    def __init__(
        self,
        model_dir: Path | None,
        *,
        poll_interval_s: float = 10.0,
        max_batch: int = 512,
        watch: bool = True,
    ) -> None:
        self._dir = Path(model_dir) if model_dir is not None else None
        self._poll = poll_interval_s
        self._max_batch = max_batch
        self._current: _Loaded | None = None
        self._failed: set[int] = set()
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._device: str | None = None  # picked when first needed: that imports TensorFlow
        self.reload()
        self._thread: threading.Thread | None = None
        if watch and self._dir is not None:
            self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._thread.start()

    # -- protocol
    @property
    def model_version(self) -> str | None:
        cur = self._current
        return cur.view.version if cur else None

    @property
    def item_vectors(self) -> EmbeddingTable | None:
        cur = self._current
        return cur.view.vectors if cur else None

    @property
    def catalog(self) -> Mapping[str, str]:
        cur = self._current
        return cur.view.catalog_map if cur else {}

    @property
    def network_ranking(self) -> bool:
        """The loaded version's guard (metadata "ranking"); True while none is loaded."""
        cur = self._current
        return cur.view.network_ranking if cur else True

    @property
    def device(self) -> str:
        """``/GPU:0`` or ``/CPU:0``; asking imports TensorFlow (once)."""
        if self._device is None:
            self._device = _pick_device()
        return self._device

    def refresh(self) -> None:
        """In process: the watcher thread does the reloading; nothing to reach."""

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]:
        cur = self._current  # one reference for the whole call: a swap does not affect it
        if cur is None or not batch.user_ids:
            return empty_result(batch)
        return self._in_parts(
            cur,
            batch,
            cur.run,
            encode_batch,
            lambda part, res: decode_result(part, cur.view, res["items"], res["scores"]),
        )

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]:
        """Network scores per candidate; empty arrays while no model is loaded."""
        cur = self._current
        if cur is None or not batch.user_ids:
            return no_scores(batch)
        return self._in_parts(
            cur,
            batch,
            cur.run_score,
            encode_candidates,
            lambda part, res: decode_candidates(part, res["scores"]),
        )

    def next_in_sequence(self, batch: SequenceBatch) -> list[list[Recommended]]:
        """The sequence model's next items; empty lists while the loaded version has none."""
        cur = self._current
        if cur is None or cur.run_next is None or not batch.user_ids:
            return empty_result(batch)
        return self._in_parts(
            cur,
            batch,
            cur.run_next,
            encode_sequences,
            lambda part, res: decode_next(part, cur.view, res["items"], res["scores"]),
        )

    def _in_parts(
        self,
        cur: _Loaded,
        batch: Any,
        run: Callable[..., Mapping[str, Any]],
        encode: Callable[[Any, ModelView], dict[str, np.ndarray]],
        decode: Callable[[Any, Mapping[str, Any]], list[Any]],
    ) -> list[Any]:
        """One signature call per part of at most ``max_batch`` users, on one version."""
        out: list[Any] = []
        for part in split(batch, self._max_batch):
            inputs = encode(part, cur.view)
            try:
                res = run(**inputs)
            except Exception as exc:  # TF raises many types; the stream needs one
                raise ScorerError(f"local model {cur.view.version}: {exc}") from exc
            out.extend(decode(part, res))
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- loading
    def reload(self) -> bool:
        """Load the newest version if it is newer than the current one; True if swapped."""
        if self._dir is None:
            return False
        with self._reload_lock:
            versions = [v for v in list_versions(self._dir) if v not in self._failed]
            if not versions:
                return False
            newest = versions[-1]
            cur = self._current
            if cur is not None and int(cur.view.version) >= newest:
                return False
            try:
                loaded = self._load(self._dir / str(newest))
            except Exception as exc:
                self._failed.add(newest)
                log.error("model version %s under %s failed to load: %s", newest, self._dir, exc)
                return False
            self._current = loaded  # single reference swap: atomic for readers
            log.info(
                "model version %s loaded on %s (was %s)",
                newest,
                self.device,
                cur.view.version if cur else None,
            )
            return True

    def _load(self, path: Path) -> _Loaded:
        tf = import_tensorflow()
        device = self.device
        view = ModelView.load(path)
        with tf.device(device):
            module = tf.saved_model.load(str(path))

        def runner(name: str) -> Callable[..., dict[str, np.ndarray]]:
            fn = module.signatures[name]

            def run(**inputs: np.ndarray) -> dict[str, np.ndarray]:
                with tf.device(device):
                    res = fn(**{k: tf.constant(v) for k, v in inputs.items()})
                return {k: v.numpy() for k, v in res.items()}

            return run

        loaded = _Loaded(
            view,
            module,
            runner("recommend"),
            runner("score"),
            runner("next_items") if view.sequence is not None else None,
        )
        _warm_up(loaded)
        return loaded

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.reload()
            except Exception:  # never let the watcher die
                log.exception("model watcher: reload failed")


def _pick_device() -> str:
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    device = "/GPU:0" if gpus else "/CPU:0"
    log.info("local scorer runs on %s (%d GPU(s) visible)", device, len(gpus))
    return device


#: What TensorFlow writes to stderr while it starts on a machine without a GPU: informational
#: lines (glog ``I...``) that TF_CPP_MIN_LOG_LEVEL cannot hide because they come before its
#: logging is initialised, absl's notice about that, and the CUDA probe's failures.
_STARTUP_NOISE = re.compile(
    rb"^I\d{4} |All log messages before absl::InitializeLog\(\) is called"
    rb"|failed call to cuInit|Could not find cuda drivers|Unable to register cu\w+ factory"
    rb"|TF-TRT Warning: Could not find TensorRT|computation placer already registered"
    rb"|^To enable the following instructions: .* rebuild TensorFlow"
)


def gpu_configured() -> bool:
    """True when this machine may have a GPU for TensorFlow: an NVIDIA (or WSL) device node,
    the NVIDIA driver, or CUDA_VISIBLE_DEVICES naming devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "-1"):
        return True
    if Path("/proc/driver/nvidia").exists() or Path("/dev/dxg").exists():
        return True
    return any(Path("/dev").glob("nvidia[0-9]*"))


def import_tensorflow() -> Any:
    """``import tensorflow`` and its GPU probe, quietly on a machine without a GPU.

    Quiet means: TF_CPP_MIN_LOG_LEVEL=1 (INFO lines hidden, warnings and errors kept) unless
    already set, and the start-up lines above filtered out of stderr while TensorFlow loads
    and probes for devices; every other line written meanwhile is written after. Nothing is
    changed with a GPU configured, at DEBUG, or when TF_CPP_MIN_LOG_LEVEL is set to 0; the
    devices TensorFlow sees are never changed.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet = (
        not gpu_configured()
        and not log.isEnabledFor(logging.DEBUG)
        and os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"
    )
    if not quiet:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with _stderr_without(_STARTUP_NOISE):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe runs here, once
    return tf


@contextlib.contextmanager
def _stderr_without(noise: re.Pattern[bytes]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly) and write back what is not noise."""
    with tempfile.TemporaryFile() as capture:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr: nothing to filter
            yield
            return
        try:
            os.dup2(capture.fileno(), 2)
        except OSError:
            os.close(saved)
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().splitlines(keepends=True)
            kept = [line for line in lines if not noise.search(line)]
            if kept:
                os.write(2, b"".join(kept))


def _warm_up(loaded: _Loaded) -> None:
    """One call per typical batch shape so the first real batch does not pay for setup."""
    d = loaded.view.vectors.dim
    for b in (1, 8):
        batch = ScoreBatch(
            [f"warmup{i}" for i in range(b)],
            np.full((b, 2, d), 0.01, np.float32),
            [({}, {})] * b,
            [set()] * b,
            loaded.view.catalog.top_k,
        )
        loaded.run(**encode_batch(batch, loaded.view))
        if loaded.run_next is not None:
            seqs = SequenceBatch(batch.user_ids, [RecentEvents()] * b, batch.k)
            loaded.run_next(**encode_sequences(seqs, loaded.view))
