"""The TensorFlow Serving client: REST predict, columnar, pinned to a version we hold locally.

The catalog that decodes item indices must be the one the served version was exported
with, so the client uses the newest version that TF Serving reports AVAILABLE *and* that
exists under the local model directory.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

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
from stream.core.types import CandidateBatch, Recommended, ScoreBatch, SequenceBatch

log = logging.getLogger("interest.scorer")


class TFServingScorer:
    """REST client of TensorFlow Serving (columnar predict), pinned to a local catalog.

    gRPC is not offered: tensorflow-serving-api is not a dependency and REST with batched
    columnar requests is enough at the stream's batch sizes.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        model_dir: Path | None,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        max_batch: int = 256,
        poll_interval_s: float = 10.0,
        signature: str = "recommend",
    ) -> None:
        self._base = url.rstrip("/")
        self._name = model_name
        self._dir = Path(model_dir) if model_dir is not None else None
        self._timeout = timeout_s
        self._retries = max(0, retries)
        self._backoff = backoff_s
        self._max_batch = max_batch
        self._poll = poll_interval_s
        self._signature = signature
        self._view: ModelView | None = None
        self._checked_at = -float("inf")
        self._failing = False
        self._lock = threading.Lock()
        try:
            self._refresh(force=True)
        except ScorerError as exc:  # the server may start after the worker
            log.warning("TF Serving not reachable yet: %s", exc)

    # The properties never touch the network: the stream reads them on its event loop.
    # The served version is refreshed inside recommend(), which runs off the loop.
    @property
    def model_version(self) -> str | None:
        return self._view.version if self._view else None

    @property
    def item_vectors(self) -> EmbeddingTable | None:
        return self._view.vectors if self._view else None

    @property
    def catalog(self) -> Mapping[str, str]:
        return self._view.catalog_map if self._view else {}

    @property
    def network_ranking(self) -> bool:
        """The pinned version's guard, read from its local metadata.json (no network I/O)."""
        return self._view.network_ranking if self._view else True

    def refresh(self) -> None:
        """Ask TF Serving for its versions (at once after a failure, else per poll interval)."""
        self._refresh(force=self._failing)

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]:
        self._refresh(force=self._failing)  # an unreachable server fails the call: users stay dirty
        view = self._view
        if view is None or not batch.user_ids:
            return empty_result(batch)
        out: list[list[Recommended]] = []
        for part in split(batch, self._max_batch):
            outputs = self.predict(encode_batch(part, view), version=view.version)
            items = np.asarray(outputs["items"], np.int32).reshape(len(part.user_ids), -1)
            scores = np.asarray(outputs["scores"], np.float32).reshape(items.shape)
            out.extend(decode_result(part, view, items, scores))
        return out

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]:
        """The `score` signature over REST; an unreachable server fails the call (retry)."""
        self._refresh(force=self._failing)
        view = self._view
        if view is None or not batch.user_ids:
            return no_scores(batch)
        out: list[np.ndarray] = []
        for part in split(batch, self._max_batch):
            outputs = self.predict(
                encode_candidates(part, view), version=view.version, signature="score"
            )
            out.extend(decode_candidates(part, np.asarray(outputs["scores"], np.float32)))
        return out

    def next_in_sequence(self, batch: SequenceBatch) -> list[list[Recommended]]:
        """The `next_items` signature over REST (the pinned version's, when it has one)."""
        self._refresh(force=self._failing)
        view = self._view
        if view is None or view.sequence is None or not batch.user_ids:
            return empty_result(batch)
        out: list[list[Recommended]] = []
        for part in split(batch, self._max_batch):
            outputs = self.predict(
                encode_sequences(part, view), version=view.version, signature="next_items"
            )
            items = np.asarray(outputs["items"], np.int32).reshape(len(part.user_ids), -1)
            scores = np.asarray(outputs["scores"], np.float32).reshape(items.shape)
            out.extend(decode_next(part, view, items, scores))
        return out

    def close(self) -> None:
        pass

    # -- HTTP
    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
        signature: str | None = None,
    ) -> dict[str, Any]:
        """One columnar predict call; returns the `outputs` object (dict for many outputs)."""
        path = f"/v1/models/{self._name}" + (f"/versions/{version}" if version else "") + ":predict"
        body = orjson.dumps(
            {"signature_name": signature or self._signature, "inputs": dict(inputs)},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        reply = self._request("POST", path, body)
        outputs = reply.get("outputs")
        if outputs is None:
            raise ScorerError(f"TF Serving {self._base}{path}: reply has no 'outputs'")
        return outputs if isinstance(outputs, dict) else {"scores": outputs}

    def served_versions(self) -> list[int]:
        """Versions TF Serving reports AVAILABLE (model status API)."""
        reply = self._request("GET", f"/v1/models/{self._name}", None)
        return sorted(
            int(s["version"])
            for s in reply.get("model_version_status", [])
            if s.get("state") == "AVAILABLE"
        )

    def _request(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        url = self._base + path
        last = "no attempt"
        for attempt in range(self._retries + 1):
            if attempt:
                time.sleep(self._backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=body, method=method)
            req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                    return orjson.loads(resp.read())
            except urllib.error.HTTPError as exc:
                detail = _error_text(exc)
                last = f"HTTP {exc.code}: {detail}"
                if exc.code < 500 and exc.code != 429:  # the request is wrong: retrying won't help
                    raise ScorerError(f"TF Serving {method} {url}: {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"{type(exc).__name__}: {reason}"
            except orjson.JSONDecodeError as exc:
                last = f"reply is not JSON: {exc}"
        raise ScorerError(
            f"TF Serving {method} {url} failed after {self._retries + 1} attempt(s): {last}"
        )

    # -- version tracking
    def _refresh(self, force: bool = False) -> None:
        """Pick the newest version both served and present under model_dir (cached)."""
        now = time.monotonic()
        if not force and now - self._checked_at < self._poll:
            return
        with self._lock:
            self._checked_at = now
            self._failing = True
            served = self.served_versions()
            self._failing = False
            local = set(list_versions(self._dir))
            usable = [v for v in served if v in local]
            if not usable:
                if served:
                    log.warning(
                        "TF Serving serves versions %s but none is under %s; no recommendations",
                        served,
                        self._dir,
                    )
                self._view = None
                return
            newest = str(usable[-1])
            if self._view is None or self._view.version != newest:
                assert self._dir is not None
                self._view = ModelView.load(self._dir / newest)
                log.info("TF Serving model %s version %s in use", self._name, newest)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()
        msg = orjson.loads(raw).get("error")
        return str(msg) if msg else raw.decode(errors="replace")[:300]
    except Exception:
        return str(exc.reason)
