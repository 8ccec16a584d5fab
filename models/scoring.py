"""Scorers: what the stream's rescoring calls to turn users' interest state into top items.

Two implementations of one protocol (see /work/notes/SCORING_API.md):

* :class:`LocalScorer` runs the newest SavedModel version in-process (GPU when TensorFlow
  sees one), and a background thread hot-swaps newer versions without stopping scoring:
  a call takes one reference to the loaded version at its start and finishes on it.
* :class:`TFServingScorer` calls TensorFlow Serving's REST predict API with the same
  signature, pinned to a version whose catalog it also holds locally, so item indices
  always decode with the catalog they were produced from.

TensorFlow is imported lazily (the TF Serving client never needs it).
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import orjson

from models.export import Catalog, EmbeddingTable, latest_version, list_versions, read_catalog

if TYPE_CHECKING:
    from stream.settings import Settings

log = logging.getLogger(__name__)

REASONS = ("your_interest", "trending_in_category", "similar_to_your_interests", "popular")
TRENDING_QUANTILE = 0.9  # items at or above this popularity quantile are "trending"


@dataclass(frozen=True, slots=True)
class Recommended:
    item_id: str
    score: float  # in [0, 1]: the network's interest strength
    category: str | None
    reason: str | None = None


@dataclass(slots=True)
class ScoreBatch:
    user_ids: list[str]
    vectors: np.ndarray  # (B, 2, d) float32: [short, long]
    categories: list[tuple[dict[str, float], dict[str, float]]]  # per user: (short, long)
    exclude: list[set[str]]  # per user: item ids never to return
    k: int


@dataclass(slots=True)
class CandidateBatch:
    """Users and the candidates to score for each (stream.candidates builds it).

    ``features[b]`` is (len(items[b]), F) float32 in stream.candidates.FEATURE_NAMES order.
    Items unknown to the model are scored too, from their features alone.
    """

    user_ids: list[str]
    vectors: np.ndarray  # (B, 2, d) float32: [short, long]
    categories: list[tuple[dict[str, float], dict[str, float]]]  # per user: (short, long)
    items: list[list[str]]
    features: list[np.ndarray]


class ScorerError(RuntimeError):
    """Scoring failed; the message says where and why (the stream retries with backoff)."""


@runtime_checkable
class Scorer(Protocol):
    @property
    def model_version(self) -> str | None: ...

    @property
    def item_vectors(self) -> EmbeddingTable | None: ...

    @property
    def catalog(self) -> Mapping[str, str]: ...

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]: ...

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]: ...

    def refresh(self) -> None:
        """Raise ScorerError when the configured model server cannot be reached.

        Called off the event loop before each rescoring batch, so that an outage keeps the
        users dirty (and counted) instead of silently degrading to the no-model blend.
        """
        ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- shared


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
    # its validation window; stream.candidates then ranks with the blend
    network_ranking: bool = True

    def __post_init__(self) -> None:
        cat = self.catalog
        pop = cat.popularity
        cut = float(np.quantile(pop, TRENDING_QUANTILE)) if len(pop) else 0.0
        self.item_names = list(cat.item_ids)
        self.item_category_names = [cat.category_of(n) for n in range(len(cat.item_ids))]
        self.trending = (pop >= cut).tolist()

    @classmethod
    def load(cls, version_dir: Path) -> ModelView:
        cat = read_catalog(version_dir)
        return cls(
            version=version_dir.name,
            path=version_dir,
            catalog=cat,
            vectors=EmbeddingTable.load(version_dir, cat),
            catalog_map=cat.as_mapping(),
            network_ranking=_network_ranking_of(version_dir),
        )


def _network_ranking_of(version_dir: Path) -> bool:
    """metadata.json ``ranking`` ("network" | "blend"); absent (older versions): network."""
    from models.export import RANKING_BLEND, read_metadata

    try:
        meta = read_metadata(version_dir)
    except (OSError, ValueError):
        return True
    return meta.get("ranking") != RANKING_BLEND


def _user_inputs(
    vectors: np.ndarray,
    categories: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
    view: ModelView,
) -> dict[str, np.ndarray]:
    """The users' half of every signature: vectors and category strengths in model index."""
    cat = view.catalog
    b = len(categories)
    vec = np.asarray(vectors, np.float32)
    if vec.shape != (b, 2, view.vectors.dim):
        raise ScorerError(
            f"vectors have shape {vec.shape}, "
            f"model {view.version} needs ({b}, 2, {view.vectors.dim})"
        )
    n_cat = len(cat.categories)
    cat_s = np.zeros((b, n_cat), np.float32)
    cat_l = np.zeros((b, n_cat), np.float32)
    for row, (short, long) in enumerate(categories):
        _fill(cat_s[row], short, cat.category_index, cat.other_slot)
        _fill(cat_l[row], long, cat.category_index, cat.other_slot)
    return {
        "short": np.ascontiguousarray(vec[:, 0]),
        "long": np.ascontiguousarray(vec[:, 1]),
        "cat_short": cat_s,
        "cat_long": cat_l,
    }


def encode_batch(batch: ScoreBatch, view: ModelView) -> dict[str, np.ndarray]:
    """ScoreBatch -> the `recommend` signature's inputs, in the model's item/category index."""
    cat = view.catalog
    b = len(batch.user_ids)
    inputs = _user_inputs(batch.vectors, batch.categories, view)
    excl = [[cat.item_index[i] for i in ex if i in cat.item_index] for ex in batch.exclude]
    # column 0 stays -1: TF Serving's batcher pads with a tensor's first element
    width = 1 + max([0, *(len(e) for e in excl)])
    exclude = np.full((b, width), -1, np.int32)
    for row, idx in enumerate(excl):
        exclude[row, 1 : 1 + len(idx)] = idx
    inputs["exclude"] = exclude
    inputs["k"] = np.full(b, max(1, int(batch.k)), np.int32)
    return inputs


def encode_candidates(batch: CandidateBatch, view: ModelView) -> dict[str, np.ndarray]:
    """CandidateBatch -> the `score` signature's inputs (items -1: unknown to the model).

    Rows are padded to the longest candidate list; padding is cut off again by
    :func:`decode_candidates`, so its value does not matter.
    """
    inputs = _user_inputs(batch.vectors, batch.categories, view)
    b = len(batch.user_ids)
    width = max([1, *(len(i) for i in batch.items)])
    n_feat = _feature_count(batch)
    items = np.full((b, width), -1, np.int32)
    feats = np.zeros((b, width, n_feat), np.float32)
    index = view.catalog.item_index
    for row, (ids, f) in enumerate(zip(batch.items, batch.features, strict=True)):
        if not ids:
            continue
        items[row, : len(ids)] = [index.get(i, -1) for i in ids]
        feats[row, : len(ids)] = np.asarray(f, np.float32).reshape(len(ids), n_feat)
    inputs["items"] = items
    inputs["feats"] = feats
    return inputs


def _feature_count(batch: CandidateBatch) -> int:
    for f in batch.features:
        a = np.asarray(f)
        if a.ndim == 2:
            return int(a.shape[1])
    from stream.candidates import N_FEATURES

    return N_FEATURES


def decode_candidates(batch: CandidateBatch, scores: np.ndarray) -> list[np.ndarray]:
    """(B, M) scores -> one (M_b,) array per user, padding dropped, clipped to [0, 1]."""
    s = np.clip(np.asarray(scores, np.float64).reshape(len(batch.user_ids), -1), 0.0, 1.0)
    return [s[row, : len(ids)].copy() for row, ids in enumerate(batch.items)]


def _no_scores(batch: CandidateBatch) -> list[np.ndarray]:
    return [np.zeros(0) for _ in batch.user_ids]


def _candidate_chunks(batch: CandidateBatch, size: int) -> list[CandidateBatch]:
    if len(batch.user_ids) <= size:
        return [batch]
    return [
        CandidateBatch(
            batch.user_ids[a : a + size],
            batch.vectors[a : a + size],
            batch.categories[a : a + size],
            batch.items[a : a + size],
            batch.features[a : a + size],
        )
        for a in range(0, len(batch.user_ids), size)
    ]


def _fill(
    row: np.ndarray, strengths: Mapping[str, float], index: Mapping[str, int], other: int
) -> None:
    """Categories the model does not know pool in the `__other__` slot (keeps totals right)."""
    for name, value in strengths.items():
        row[index.get(name, other)] += value


def decode_result(
    batch: ScoreBatch, view: ModelView, items: np.ndarray, scores: np.ndarray
) -> list[list[Recommended]]:
    """Item indices and scores -> Recommended lists (padding -1 dropped, at most k).

    Vectorised per batch where it can be: this runs for every user the stream rescores.
    """
    out: list[list[Recommended]] = []
    names, cats, trending = view.item_names, view.item_category_names, view.trending
    items = np.asarray(items)[:, : max(1, batch.k)]
    scores = np.clip(np.asarray(scores, np.float64)[:, : items.shape[1]], 0.0, 1.0).tolist()
    has_vec = (np.abs(np.asarray(batch.vectors)).sum(axis=(1, 2)) > 0).tolist()
    for row, idx_row in enumerate(items.tolist()):
        short, long = batch.categories[row]
        recs: list[Recommended] = []
        for idx, score in zip(idx_row, scores[row], strict=True):
            if idx < 0:
                continue
            c = cats[idx]
            recs.append(
                Recommended(
                    names[idx], score, c, _reason(c, short, long, has_vec[row], trending[idx])
                )
            )
        out.append(recs)
    return out


def _reason(
    category: str | None,
    short: Mapping[str, float],
    long: Mapping[str, float],
    has_vector: bool,
    trending: bool,
) -> str:
    """Why an item was chosen, from what drove its retrieval."""
    in_user_cat = category is not None and (
        short.get(category, 0.0) > 0 or long.get(category, 0.0) > 0
    )
    if in_user_cat:
        return "trending_in_category" if trending else "your_interest"
    if has_vector:
        return "similar_to_your_interests"
    return "popular"


def _empty(batch: ScoreBatch) -> list[list[Recommended]]:
    return [[] for _ in batch.user_ids]


def _chunks(batch: ScoreBatch, size: int) -> list[ScoreBatch]:
    if len(batch.user_ids) <= size:
        return [batch]
    return [
        ScoreBatch(
            batch.user_ids[a : a + size],
            batch.vectors[a : a + size],
            batch.categories[a : a + size],
            batch.exclude[a : a + size],
            batch.k,
        )
        for a in range(0, len(batch.user_ids), size)
    ]


class StaticScorer:
    """A Scorer over one in-memory model (no directory, no reload): offline evaluation."""

    def __init__(self, view: ModelView, run: Callable[..., Mapping[str, Any]]) -> None:
        self._view = view
        self._run = run

    @classmethod
    def from_trained(cls, trained: Any, version: str = "trained") -> StaticScorer:
        art = trained.artifacts
        cat = Catalog(
            item_ids=list(art.item_ids),
            item_cat=art.item_category_index(),
            categories=list(art.categories),
            popularity=np.asarray(art.popularity, np.float32),
            num_candidates=art.num_candidates,
            top_k=art.top_k,
        )
        view = ModelView(
            version=version,
            path=Path("."),
            catalog=cat,
            vectors=EmbeddingTable(version, art.item_ids, art.embeddings),
            catalog_map=cat.as_mapping(),
            network_ranking=bool(trained.metrics.get("ranking", {}).get("use_network", True)),
        )
        module = trained.module()

        def run(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            fn = module.score if "feats" in inputs else module.recommend
            return {k: v.numpy() for k, v in fn(**inputs).items()}

        return cls(view, run)

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

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------- local


@dataclass(slots=True)
class _Loaded:
    view: ModelView
    module: Any  # keeps the restored object (and its variables) alive
    run: Callable[..., Mapping[str, Any]]
    run_score: Callable[..., Mapping[str, Any]]


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
        self._device = _pick_device()
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
        return self._device

    def refresh(self) -> None:
        """In process: the watcher thread does the reloading; nothing to reach."""

    def recommend(self, batch: ScoreBatch) -> list[list[Recommended]]:
        cur = self._current  # one reference for the whole call: a swap does not affect it
        if cur is None or not batch.user_ids:
            return _empty(batch)
        out: list[list[Recommended]] = []
        for part in _chunks(batch, self._max_batch):
            inputs = encode_batch(part, cur.view)
            try:
                res = cur.run(**inputs)
            except Exception as exc:  # TF raises many types; the stream needs one
                raise ScorerError(f"local model {cur.view.version}: {exc}") from exc
            out.extend(decode_result(part, cur.view, res["items"], res["scores"]))
        return out

    def score_candidates(self, batch: CandidateBatch) -> list[np.ndarray]:
        """Network scores per candidate; empty arrays while no model is loaded."""
        cur = self._current
        if cur is None or not batch.user_ids:
            return _no_scores(batch)
        out: list[np.ndarray] = []
        for part in _candidate_chunks(batch, self._max_batch):
            inputs = encode_candidates(part, cur.view)
            try:
                res = cur.run_score(**inputs)
            except Exception as exc:
                raise ScorerError(f"local model {cur.view.version}: {exc}") from exc
            out.extend(decode_candidates(part, res["scores"]))
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
                self._device,
                cur.view.version if cur else None,
            )
            return True

    def _load(self, path: Path) -> _Loaded:
        import tensorflow as tf

        view = ModelView.load(path)
        with tf.device(self._device):
            module = tf.saved_model.load(str(path))

        def runner(name: str) -> Callable[..., dict[str, np.ndarray]]:
            fn = module.signatures[name]

            def run(**inputs: np.ndarray) -> dict[str, np.ndarray]:
                with tf.device(self._device):
                    res = fn(**{k: tf.constant(v) for k, v in inputs.items()})
                return {k: v.numpy() for k, v in res.items()}

            return run

        loaded = _Loaded(view, module, runner("recommend"), runner("score"))
        _warm_up(loaded)
        return loaded

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.reload()
            except Exception:  # never let the watcher die
                log.exception("model watcher: reload failed")


def _pick_device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = "/GPU:0" if gpus else "/CPU:0"
    log.info("local scorer runs on %s (%d GPU(s) visible)", device, len(gpus))
    return device


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


# ----------------------------------------------------------------------------- TF Serving


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
            return _empty(batch)
        out: list[list[Recommended]] = []
        for part in _chunks(batch, self._max_batch):
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
            return _no_scores(batch)
        out: list[np.ndarray] = []
        for part in _candidate_chunks(batch, self._max_batch):
            outputs = self.predict(
                encode_candidates(part, view), version=view.version, signature="score"
            )
            out.extend(decode_candidates(part, np.asarray(outputs["scores"], np.float32)))
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


# ----------------------------------------------------------------------------- factory


def open_scorer(settings: Settings) -> Scorer:
    """The scorer the settings ask for (`local` or `tfserving`)."""
    kind = str(getattr(settings.scorer, "value", settings.scorer))
    if kind == "local":
        return LocalScorer(settings.model_dir, poll_interval_s=settings.model_poll_interval_s)
    if kind == "tfserving":
        return TFServingScorer(
            settings.tfserving_url,
            settings.tfserving_model_name,
            settings.model_dir,
            timeout_s=settings.scorer_timeout_ms / 1000.0,
            poll_interval_s=settings.model_poll_interval_s,
        )
    raise ScorerError(f"INTEREST_SCORER: unknown scorer {kind!r} (allowed: local, tfserving)")


def newest_version_dir(model_dir: Path | None) -> Path | None:
    v = latest_version(model_dir)
    return None if v is None or model_dir is None else Path(model_dir) / str(v)


__all__: Sequence[str] = (
    "CandidateBatch",
    "LocalScorer",
    "ModelView",
    "Recommended",
    "ScoreBatch",
    "Scorer",
    "ScorerError",
    "StaticScorer",
    "TFServingScorer",
    "open_scorer",
)
