"""Scorer protocol conformance (local and TF Serving via the stand-in) and hot reload."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from models.serving import LocalScorer, TFServingScorer, open_scorer
from models.training.export import export_version
from stream.core.errors import ScorerError
from stream.core.sequence import RecentEvents
from stream.core.types import (
    CandidateBatch,
    Recommended,
    RecommendReason,
    ScoreBatch,
    Scorer,
    SequenceBatch,
)
from tests.support.helpers import wait_for
from tests.support.models import D, toy_artifacts
from tests.support.tfserving_standin import StandinServer


def make_batch(
    b: int, k: int = 5, seed: int = 0, exclude: list[set[str]] | None = None
) -> ScoreBatch:
    rng = np.random.default_rng(seed)
    cats = [
        ({"c1": float(rng.random()), "unknown_cat": 1.0}, {"c2": 2.0, "c1": 0.5}) for _ in range(b)
    ]
    vec = rng.normal(size=(b, 2, D)).astype(np.float32)
    vec[0] = 0.0  # a cold user
    cats[0] = ({}, {})
    return ScoreBatch(
        [f"u{n}" for n in range(b)], vec, cats, exclude or [set() for _ in range(b)], k
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("served")
    export_version(toy_artifacts(seed=0), base)
    return base


@pytest.fixture(scope="module")
def local(model_dir: Path):
    scorer = LocalScorer(model_dir, watch=False)
    yield scorer
    scorer.close()


def check_conformance(scorer: Scorer, version: str) -> list[list[Recommended]]:
    assert isinstance(scorer, Scorer)
    assert scorer.model_version == version
    vecs = scorer.item_vectors
    assert vecs is not None and vecs.version == version and vecs.dim == D
    assert vecs.get("i0") is not None and vecs.get("missing") is None
    assert scorer.catalog["i7"] == "c1"
    excl = [{"i1", "i2", "zzz"} for _ in range(6)]
    out = scorer.recommend(make_batch(6, k=5, exclude=excl))
    assert len(out) == 6
    for recs, ex in zip(out, excl, strict=True):
        assert 0 < len(recs) <= 5
        assert all(isinstance(r, Recommended) and 0.0 <= r.score <= 1.0 for r in recs)
        assert not {r.item_id for r in recs} & ex
        assert all(r.reason in set(RecommendReason) for r in recs)
        assert all(r.category == scorer.catalog.get(r.item_id) for r in recs)
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    assert {r.reason for r in out[0]} == {"popular"}  # the cold user
    return out


def test_local_scorer_conformance(local: LocalScorer, model_dir: Path) -> None:
    version = str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))
    check_conformance(local, version)
    assert local.device in ("/CPU:0", "/GPU:0")
    assert local.recommend(make_batch(3, k=2))[1].__len__() == 2


def test_local_scorer_without_model(tmp_path: Path) -> None:
    for d in (None, tmp_path, tmp_path / "absent"):
        s = LocalScorer(d, watch=False)
        assert s.model_version is None and s.item_vectors is None and s.catalog == {}
        assert s.recommend(make_batch(2)) == [[], []]
        s.close()


def test_local_scorer_rejects_wrong_dimension(local: LocalScorer) -> None:
    b = make_batch(2)
    b.vectors = np.zeros((2, 2, D + 1), np.float32)
    with pytest.raises(ScorerError, match="shape"):
        local.recommend(b)


def test_local_scorer_splits_large_batches(model_dir: Path, local: LocalScorer) -> None:
    small = LocalScorer(model_dir, watch=False, max_batch=3)
    batch = make_batch(10, seed=4)
    got, want = small.recommend(batch), local.recommend(batch)
    # the same items; scores equal up to float32 rounding (matmul blocking depends on shape)
    assert [[r.item_id for r in u] for u in got] == [[r.item_id for r in u] for u in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-5)
    small.close()


def test_hot_reload_swaps_without_dropping_a_batch(tmp_path: Path) -> None:
    first = export_version(toy_artifacts(seed=1), tmp_path)
    scorer = LocalScorer(tmp_path, poll_interval_s=0.05)
    assert scorer.model_version == first.name
    results: list[int] = []
    versions: set[str | None] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                versions.add(scorer.model_version)
                out = scorer.recommend(make_batch(64, seed=len(results)))
                results.append(sum(1 for r in out if r))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    try:
        second = export_version(toy_artifacts(seed=2), tmp_path)
        wait_for(lambda: scorer.model_version == second.name, 20, "the new version never loaded")
        n_at_swap = len(results)
        wait_for(lambda: len(results) >= n_at_swap + 3, 20, "no batch after the swap")
    finally:
        stop.set()
        t.join()
        scorer.close()
    assert not errors
    assert scorer.model_version == second.name
    assert int(second.name) > int(first.name)
    assert {first.name, second.name} <= versions
    assert results and all(n == 64 for n in results)  # every user of every batch got items


def test_batch_in_flight_finishes_on_old_model(tmp_path: Path) -> None:
    export_version(toy_artifacts(seed=1), tmp_path)
    scorer = LocalScorer(tmp_path, watch=False)
    old = scorer._current
    export_version(toy_artifacts(seed=2), tmp_path)
    started, release = threading.Event(), threading.Event()
    real_run = old.run

    def slow_run(**kw: np.ndarray):
        started.set()
        release.wait(10)
        return real_run(**kw)

    old.run = slow_run
    box: dict[str, object] = {}
    t = threading.Thread(target=lambda: box.setdefault("out", scorer.recommend(make_batch(4))))
    t.start()
    assert started.wait(10)
    assert scorer.reload()  # swap while the batch is inside the old model
    release.set()
    t.join(10)
    out = box["out"]
    assert isinstance(out, list) and len(out) == 4 and all(out)
    assert scorer._current is not old
    scorer.close()


# ----------------------------------------------------------------------------- TF Serving


@pytest.fixture(scope="module")
def standin(model_dir: Path):
    with StandinServer(model_dir, "interest") as server:
        yield server


def test_tfserving_scorer_conformance_and_parity(
    standin: StandinServer, model_dir: Path, local: LocalScorer
) -> None:
    scorer = TFServingScorer(standin.url, "interest", model_dir, max_batch=4)
    out = check_conformance(scorer, local.model_version or "")
    batch = make_batch(6, k=5, exclude=[{"i1", "i2", "zzz"} for _ in range(6)])
    ref = local.recommend(batch)
    for a, b in zip(out, ref, strict=True):
        assert [r.item_id for r in a] == [r.item_id for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-5)
    assert scorer.served_versions() == [int(local.model_version or 0)]
    scorer.close()


def test_tfserving_retries_transient_failures(standin: StandinServer, model_dir: Path) -> None:
    scorer = TFServingScorer(standin.url, "interest", model_dir, retries=3, backoff_s=0.01)
    standin.fail_next = 2
    assert len(scorer.recommend(make_batch(2))) == 2
    assert standin.fail_next == 0
    standin.fail_next = 10
    with pytest.raises(ScorerError, match=r"after 2 attempt\(s\).*503"):
        TFServingScorer(standin.url, "interest", model_dir, retries=1, backoff_s=0.01).recommend(
            make_batch(1)
        )
    standin.fail_next = 0


def test_tfserving_timeout_and_errors_are_clear(standin: StandinServer, model_dir: Path) -> None:
    scorer = TFServingScorer(standin.url, "interest", model_dir, timeout_s=0.2, retries=0)
    standin.delay_s = 0.6
    try:
        with pytest.raises(ScorerError, match=r"TimeoutError|timed out"):
            scorer.recommend(make_batch(1))
    finally:
        standin.delay_s = 0.0
    bad = TFServingScorer(standin.url, "interest", model_dir, signature="nope", retries=3)
    before = standin.requests
    with pytest.raises(ScorerError, match=r"HTTP 400.*nope"):
        bad.recommend(make_batch(1))
    assert standin.requests == before + 1  # a 4xx is not retried


def test_tfserving_unreachable(model_dir: Path) -> None:
    scorer = TFServingScorer(
        "http://127.0.0.1:9", "interest", model_dir, retries=1, backoff_s=0.01, timeout_s=0.5
    )
    assert scorer.model_version is None
    with pytest.raises(ScorerError, match=r"127\.0\.0\.1:9"):
        scorer.recommend(make_batch(1))


def test_tfserving_without_local_catalog_returns_empty(
    standin: StandinServer, tmp_path: Path
) -> None:
    scorer = TFServingScorer(standin.url, "interest", tmp_path)
    assert scorer.model_version is None
    assert scorer.recommend(make_batch(2)) == [[], []]


def test_open_scorer(model_dir: Path, standin: StandinServer) -> None:
    s = open_scorer("local", model_dir, poll_interval_s=60)
    assert isinstance(s, LocalScorer) and s.model_version is not None
    s.close()
    t = open_scorer("tfserving", model_dir, tfserving_url=standin.url)
    assert isinstance(t, TFServingScorer) and t.model_version == s.model_version


def make_candidates(b: int, seed: int = 0) -> CandidateBatch:
    """Candidates mixing items the model knows, one it lacks, and an empty user."""
    from stream.core.features import N_FEATURES

    base = make_batch(b, seed=seed)
    rng = np.random.default_rng(seed)
    items = [[f"i{k}" for k in rng.integers(0, 100, 1 + n % 4)] + ["new-item"] for n in range(b)]
    items[-1] = []
    feats = [rng.random((len(i), N_FEATURES)).astype(np.float32) for i in items]
    return CandidateBatch(base.user_ids, base.vectors, base.categories, items, feats)


def test_score_candidates_local_and_tfserving_agree(
    standin: StandinServer, model_dir: Path, local: LocalScorer
) -> None:
    batch = make_candidates(6, seed=2)
    got = local.score_candidates(batch)
    assert [len(s) for s in got] == [len(i) for i in batch.items]
    assert all(np.all((s >= 0) & (s <= 1)) for s in got)
    assert all(np.all(s[-1:] > 0) for s in got[:-1])  # the unknown item is scored too
    remote = TFServingScorer(standin.url, "interest", model_dir, max_batch=4)
    for a, b in zip(remote.score_candidates(batch), got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    small = LocalScorer(model_dir, watch=False, max_batch=2)
    for a, b in zip(small.score_candidates(batch), got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    small.close()


def test_score_candidates_without_model_or_server(tmp_path: Path) -> None:
    batch = make_candidates(2)
    empty = LocalScorer(tmp_path, watch=False)
    assert [len(s) for s in empty.score_candidates(batch)] == [0, 0]
    down = TFServingScorer("http://127.0.0.1:9", "interest", tmp_path, retries=0, timeout_s=0.2)
    with pytest.raises(ScorerError):
        down.score_candidates(batch)


def test_scorers_expose_the_ranking_guard(
    standin: StandinServer, model_dir: Path, local: LocalScorer, tmp_path: Path
) -> None:
    assert local.network_ranking is True  # metadata.json ranking = network
    lost = tmp_path / "lost"
    export_version(toy_artifacts(seed=0), lost, metrics={"ranking": {"use_network": False}})
    guarded = LocalScorer(lost, watch=False)
    assert guarded.network_ranking is False and guarded.model_version is not None
    guarded.close()
    assert LocalScorer(tmp_path / "none", watch=False).network_ranking is True
    remote = TFServingScorer(standin.url, "interest", model_dir)
    assert remote.network_ranking is True


# ----------------------------------------------------------------------------- sequence


def make_sequences(b: int, seed: int = 0) -> SequenceBatch:
    """Recent events of ``b`` users: known items, one the model lacks, an unknown type,
    and one user with no events at all (the last)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for n in range(b - 1):
        seq = RecentEvents()
        for e in range(2 + n % 9):
            item = "never-seen" if e == 1 else f"i{int(rng.integers(0, 100))}"
            kind = "teleport" if e == 2 else ("browse", "click", "purchase")[e % 3]
            seq.insert(1_000 * e, item, kind, 8)
        seqs.append(seq)
    seqs.append(RecentEvents())
    return SequenceBatch([f"u{n}" for n in range(b)], seqs, 5)


@pytest.fixture(scope="module")
def sequence_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sequence")
    export_version(toy_artifacts(seed=0, sequence=True), base)
    return base


def test_next_in_sequence_local_and_tfserving_agree(sequence_dir: Path) -> None:
    local = LocalScorer(sequence_dir, watch=False)
    batch = make_sequences(7, seed=1)
    got = local.next_in_sequence(batch)
    assert len(got) == 7 and got[-1] == []  # no events: no next item
    for recs in got[:-1]:
        assert 0 < len(recs) <= 5
        assert all(r.reason == RecommendReason.next_in_sequence for r in recs)
        assert all(0.0 <= r.score <= 1.0 for r in recs)
        assert all(r.category == local.catalog.get(r.item_id) for r in recs)
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    small = LocalScorer(sequence_dir, watch=False, max_batch=2)
    assert [[r.item_id for r in u] for u in small.next_in_sequence(batch)] == [
        [r.item_id for r in u] for u in got
    ]
    with StandinServer(sequence_dir, "interest") as server:
        remote = TFServingScorer(server.url, "interest", sequence_dir, max_batch=3)
        for a, b in zip(remote.next_in_sequence(batch), got, strict=True):
            assert [r.item_id for r in a] == [r.item_id for r in b]
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-5)
    small.close()
    local.close()


def test_next_in_sequence_without_a_sequence_model(local: LocalScorer, tmp_path: Path) -> None:
    batch = make_sequences(3)
    assert local.next_in_sequence(batch) == [[], [], []]  # a version without one
    assert LocalScorer(tmp_path, watch=False).next_in_sequence(batch) == [[], [], []]
