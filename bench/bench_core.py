"""Benchmark of the functional core: parse + fold + serialise per event, against baselines.

Run: ``python bench/bench_core.py``.  Events are the 114-user Taobao sample (synthetic
users when it is absent), sent as JSON records in batches of one user's events, the way
the apply agent sees them.  Every figure is measured in this run, so the ratios compare
like with like on whatever machine runs it.  Writes ``bench/results/core.json``.

The dedup section times the event-id table (stream.worker.dedup, over real RocksDB stores in
a temporary directory, changelog records to a counting stand-in for the producer): the
batched check of every event of a fetch plus the flush's write, per event, and the bytes it
keeps per remembered id.

The parse section times the record parser alone on 100,000 valid records per kind: the
0.2.0 parser (orjson plus hand-written checks, kept below as the baseline), today's
per-record ``parse`` and the typed ``parse_batch`` over fetches of 500 records.

The sequence section measures what keeping each user's last 50 events (stream.core.sequence)
costs, with the sequence on (``sequence_length`` 50) and off (0) in the same run, runs
alternating so that load on the machine hits both alike: the fold per event (one user's
batch of 20, as above, and fetches of 500 events of many users in time order, the worker's
``fold_batch``), encode and decode per state, and the encoded state's bytes.

``--out PATH`` writes the JSON elsewhere (``--out -``: nowhere), to leave the committed
results alone.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS
from stream.core import interest
from stream.core.codec import decode, encode
from stream.core.events import MAX_ID_CHARS, EventParser, derive_event_id
from stream.core.interest import InterestConfig, UserState, fold, fold_batch, new_state
from stream.core.types import Event, EventBatch, Rejection

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "taobao_userbehavior_114users" / "UserBehavior.csv"
OUT = ROOT / "bench" / "results" / "core.json"
BATCH = 20
REPEATS = 5
NOW = 2_000_000_000_000
PARSE_RECORDS = 100_000
SEQUENCE_REPEATS = 9  # rounds of the sequence section (short runs, noisy machine)
FETCH = 500  # records per parse_batch call: one Kafka fetch


class DictVectors:
    """Random embeddings for every item: the model's ItemVectors, without the model."""

    def __init__(self, items: set[str], dim: int) -> None:
        rng = np.random.default_rng(0)
        self.version = "1"
        self.dim = dim
        self.table = {i: rng.standard_normal(dim).astype(np.float32) for i in sorted(items)}

    def get(self, item_id: str) -> np.ndarray | None:
        return self.table.get(item_id)


def load_rows() -> list[tuple[str, str, str, str, int]]:
    """(user, item, category, type, ts_ms) rows in time order per user."""
    if DATA.exists():
        with DATA.open(newline="") as fh:
            rows = [(u, i, c, b, int(t) * 1000) for u, i, c, b, t in csv.reader(fh)]
    else:
        rnd = random.Random(1)
        kinds = ["pv"] * 20 + ["cart", "fav", "buy"]
        rows = [
            (f"u{n % 114}", f"i{rnd.randrange(5000)}", f"c{rnd.randrange(300)}", rnd.choice(kinds),
             1_511_000_000_000 + n * 1000)
            for n in range(10_000)
        ]  # fmt: skip
    rows.sort(key=lambda r: (r[0], r[4]))
    return rows


def make_batches(rows: list[tuple[str, str, str, str, int]]) -> list[tuple[str, list[bytes]]]:
    """One user's consecutive events as raw JSON values, BATCH at a time."""
    per_user: dict[str, list[bytes]] = defaultdict(list)
    for u, i, c, b, t in rows:
        rec = {"user_id": u, "item_id": i, "type": b, "ts": t, "category": c}
        per_user[u].append(orjson.dumps(rec))
    return [
        (u, values[k : k + BATCH])
        for u, values in per_user.items()
        for k in range(0, len(values), BATCH)
    ]


def best_of(fn: Callable[[], None]) -> float:
    """Best wall time of REPEATS runs (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(REPEATS):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def timings(fn: Callable[[], object]) -> list[float]:
    """Wall times of REPEATS runs, for a best figure and the spread around it."""
    times = []
    for _ in range(REPEATS):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class OrjsonParser:
    """The 0.2.0 parser's path for a valid record, kept as the baseline to measure against.

    ``orjson.loads`` then inline ``type(x) is`` checks (its ``_fast``); anything unusual
    goes to ``EventParser.build``, as it did.  Only the speed is of interest here: the
    results are checked equal to the current parser's before they are timed.
    """

    def __init__(
        self, parser: EventParser, weights: Mapping[str, float], aliases: Mapping[str, str]
    ) -> None:
        canon = {k.strip().lower(): float(w) for k, w in weights.items()}
        self.types = {name: (name, w) for name, w in canon.items()}
        for alias, target in aliases.items():
            t = target.strip().lower()
            self.types[alias.strip().lower()] = (t, canon[t])
        self.parser = parser
        self.max_bytes = 65536
        self.max_future_ms = 86_400_000

    def parse(self, value: bytes, now_ms: int) -> Event | Rejection:
        if not value or len(value) > self.max_bytes:
            return Rejection("invalid_json", "baseline: not timed")
        obj = orjson.loads(value)
        ts = obj.get("ts")
        fast = self._fast(obj, ts, now_ms)
        if fast is not None:
            return fast
        fields = ("user_id", "item_id", "type", "event_id", "category", "dwell_ms", "quantity")
        return self.parser.build(**{k: obj.get(k) for k in fields}, ts=ts, now_ms=now_ms)

    def _fast(self, obj: dict[str, Any], ts: Any, now: int) -> Event | None:
        user_id = obj.get("user_id")
        item_id = obj.get("item_id")
        type_ = obj.get("type")
        hit = self.types.get(type_) if type(type_) is str else None
        event_id = obj.get("event_id")
        category = obj.get("category")
        if (
            hit is None
            or type(user_id) is not str
            or type(item_id) is not str
            or type(ts) is not int
            or not 0 <= ts <= now + self.max_future_ms
            or not 0 < len(user_id) <= MAX_ID_CHARS
            or not 0 < len(item_id) <= MAX_ID_CHARS
            or "dwell_ms" in obj
            or "quantity" in obj
        ):
            return None
        if event_id is None:
            event_id = derive_event_id(user_id, item_id, hit[0], ts)
        elif type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_CHARS:
            return None
        if category is not None and (
            type(category) is not str or not 0 < len(category) <= MAX_ID_CHARS
        ):
            return None
        return Event(user_id, item_id, hit[0], ts, event_id, category, hit[1])


def parse_sets(rows: list[tuple[str, str, str, str, int]]) -> dict[str, list[bytes]]:
    """PARSE_RECORDS valid records of each kind the parser meets."""
    rnd = random.Random(2)
    ids = [
        (f"u{rnd.randrange(10_000)}", f"i{rnd.randrange(100_000)}", f"c{rnd.randrange(300)}")
        for _ in range(PARSE_RECORDS)
    ]
    contract = [
        {"user_id": u, "item_id": i, "type": "click", "ts": 1_764_320_000_000 + n, "category": c}
        for n, (u, i, c) in enumerate(ids)
    ]
    taobao = [
        {"user_id": u, "item_id": i, "type": b, "ts": t + n // len(rows), "category": c}
        for n, (u, i, c, b, t) in enumerate(rows[k % len(rows)] for k in range(PARSE_RECORDS))
    ]
    return {
        "contract": [orjson.dumps(r) for r in contract],
        "contract_with_event_id": [
            orjson.dumps({**r, "event_id": f"e{n}"}) for n, r in enumerate(contract)
        ],
        "taobao": [orjson.dumps(r) for r in taobao],
    }


def parse_costs(rows: list[tuple[str, str, str, str, int]]) -> dict[str, dict[str, list[float]]]:
    """Microseconds per valid record of each parser, every repeat (best first)."""
    parser = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES)
    baseline = OrjsonParser(parser, DEFAULT_WEIGHTS, DEFAULT_ALIASES)
    out: dict[str, dict[str, list[float]]] = {}
    for kind, values in parse_sets(rows).items():
        fetches = [
            (values[k : k + FETCH], [-1] * len(values[k : k + FETCH]))
            for k in range(0, len(values), FETCH)
        ]
        sample = values[:2000]
        batch, rejected = parser.parse_batch(sample, [-1] * len(sample), NOW)
        singles = [parser.parse(v, now_ms=NOW) for v in sample]
        assert not rejected and singles == [baseline.parse(v, NOW) for v in sample]
        assert [batch.event(i) for i in range(len(batch))] == singles
        runs = {
            "orjson_parse_0.2.0": lambda vs=values: [baseline.parse(v, NOW) for v in vs],
            "parse": lambda vs=values: [parser.parse(v, now_ms=NOW) for v in vs],
            "parse_batch": lambda fs=fetches: [parser.parse_batch(v, t, NOW) for v, t in fs],
        }
        out[kind] = {
            name: sorted(t / len(values) * 1e6 for t in timings(fn)) for name, fn in runs.items()
        }
    return out


def run_json(batches: list[tuple[str, list[bytes]]]) -> None:
    for _, values in batches:
        for v in values:
            json.loads(v)


def run_orjson(batches: list[tuple[str, list[bytes]]]) -> None:
    for _, values in batches:
        for v in values:
            orjson.loads(v)


def run_naive(batches: list[tuple[str, list[bytes]]]) -> None:
    """The least anyone could do: json.loads, then a dict of decayed floats per user."""
    weights = {**DEFAULT_WEIGHTS, **{a: DEFAULT_WEIGHTS[t] for a, t in DEFAULT_ALIASES.items()}}
    users: dict[str, dict[str, float]] = {}
    t_ref: dict[str, int] = {}
    h = 604_800_000
    for user, values in batches:
        d = users.setdefault(user, {})
        for v in values:
            r = json.loads(v)
            t = r["ts"]
            last = t_ref.get(user, t)
            if t > last:
                f = 2.0 ** (-(t - last) / h)
                for k in d:
                    d[k] *= f
                t_ref[user] = last = t
            c = r["category"]
            d[c] = d.get(c, 0.0) + weights[r["type"]] * 2.0 ** (-(last - t) / h)


def run_core(
    batches: list[tuple[str, list[bytes]]],
    parser: EventParser,
    vectors: DictVectors,
    cfg: InterestConfig | None = None,
) -> dict[str, bytes]:
    """The apply agent's work per batch: decode, parse each record, fold, encode."""
    cfg = cfg or InterestConfig()
    table: dict[str, bytes] = {}
    for user, values in batches:
        blob = table.get(user)
        state = decode(blob) if blob is not None else new_state(user)
        events = []
        for v in values:
            e = parser.parse(v, now_ms=NOW)
            if isinstance(e, Event):
                events.append(e)
        fold(state, events, cfg, vectors=vectors)
        table[user] = encode(state)
    return table


def fold_per_user(
    batches: list[tuple[str, list[bytes]]],
    parsed: list[list[Any]],
    cfg: InterestConfig,
    vectors: DictVectors,
) -> dict[str, UserState]:
    """Each user's batch folded into its state, one fold call per batch (as 0.2.0 did)."""
    states: dict[str, UserState] = {}
    for (user, _), events in zip(batches, parsed, strict=True):
        s = states.get(user) or new_state(user)
        fold(s, events, cfg, vectors=vectors)  # type: ignore[arg-type]
        states[user] = s
    return states


def stage_costs(
    batches: list[tuple[str, list[bytes]]], parser: EventParser, vectors: DictVectors
) -> dict[str, float]:
    """Seconds per event of each stage alone (parse, fold, encode, decode)."""
    n = sum(len(v) for _, v in batches)
    parsed = [[parser.parse(v, now_ms=NOW) for v in values] for _, values in batches]
    cfg = InterestConfig()

    def folds() -> dict[str, UserState]:
        return fold_per_user(batches, parsed, cfg, vectors)

    final = list(folds().values())
    blobs = [encode(s) for s in final]  # type: ignore[arg-type]
    per_batch = len(batches) / len(final)  # encode/decode happen once per batch
    return {
        "parse": best_of(lambda: [parser.parse(v, now_ms=NOW) for _, vs in batches for v in vs])
        / n,
        "fold": best_of(folds) / n,
        "encode": best_of(lambda: [encode(s) for s in final]) * per_batch / n,  # type: ignore[arg-type]
        "decode": best_of(lambda: [decode(b) for b in blobs]) * per_batch / n,
    }


class _StepClock:
    """Adds up the time spent in the fold's sequence step (stream.core.interest._remember,
    wrapped while the clock is on): on a busy machine the on/off difference of two whole
    folds drowns in noise, the step's own time much less."""

    def __init__(self) -> None:
        self.total = 0.0
        self._step = interest._remember

    def __enter__(self) -> _StepClock:
        step = self._step

        def timed(*args: Any) -> None:
            t0 = time.perf_counter()
            step(*args)
            self.total += time.perf_counter() - t0

        interest._remember = timed  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        interest._remember = self._step  # type: ignore[assignment]


def sequence_costs(
    rows: list[tuple[str, str, str, str, int]],
    batches: list[tuple[str, list[bytes]]],
    parser: EventParser,
    vectors: DictVectors,
) -> dict[str, Any]:
    """The sequence's cost: fold µs/event (and of that, the sequence step's own µs/event),
    encode/decode µs/state and bytes/state, on (50) and off (0), measured alternately in
    SEQUENCE_REPEATS rounds (best of each)."""
    configs = {"on": InterestConfig(sequence_length=50), "off": InterestConfig(sequence_length=0)}
    n = sum(len(v) for _, v in batches)
    parsed = [[parser.parse(v, now_ms=NOW) for v in values] for _, values in batches]
    events = [
        Event(u, i, b, t, derive_event_id(u, i, b, t), c, 1.0)
        for u, i, c, b, t in sorted(rows, key=lambda r: r[4])  # as a topic interleaves them
    ]
    fetches = []
    for k in range(0, len(events), FETCH):
        batch = EventBatch.of(events[k : k + FETCH])
        names = sorted(set(batch.user_id))
        at = {u: j for j, u in enumerate(names)}
        fetches.append((batch, names, np.array([at[u] for u in batch.user_id], np.int64)))

    def per_user(cfg: InterestConfig) -> dict[str, UserState]:
        return fold_per_user(batches, parsed, cfg, vectors)

    def per_fetch(cfg: InterestConfig) -> dict[str, UserState]:
        states: dict[str, UserState] = {}
        for batch, names, users in fetches:
            fold_batch(
                [states.get(u) or states.setdefault(u, new_state(u)) for u in names],
                batch,
                users,
                cfg,
                vectors=vectors,
            )
        return states

    finals = {k: list(per_user(c).values()) for k, c in configs.items()}
    blobs = {k: [encode(s) for s in v] for k, v in finals.items()}
    runs: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in configs}
    for _ in range(SEQUENCE_REPEATS):
        for key, cfg in configs.items():
            states, data = finals[key], blobs[key]
            for name, fn, per in (
                ("fold_us_per_event", lambda c=cfg: per_user(c), n),
                ("fold_batch_us_per_event", lambda c=cfg: per_fetch(c), len(events)),
                ("encode_us_per_state", lambda s=states: [encode(x) for x in s], len(states)),
                ("decode_us_per_state", lambda d=data: [decode(b) for b in d], len(data)),
            ):
                gc.collect()
                with _StepClock() as clock:
                    t0 = time.perf_counter()
                    fn()
                    runs[key][name].append((time.perf_counter() - t0) / per * 1e6)
                if name.startswith("fold"):
                    step = name.replace("_us_", "_sequence_step_us_")
                    runs[key][step].append(clock.total / per * 1e6)
    out: dict[str, Any] = {"events": n, "fetch_events": len(events), "fetch": FETCH}
    for key in configs:
        sizes = sorted(map(len, blobs[key]))
        out[key] = {
            **{name: {"best": min(t), "runs": t} for name, t in runs[key].items()},
            "state_bytes": {
                "median": statistics.median(sizes),
                "p90": sizes[int(0.9 * (len(sizes) - 1))],
                "max": sizes[-1],
                "total": sum(sizes),
            },
            "events_kept_median": statistics.median(len(s.sequence) for s in finals[key]),
        }
    return out


class _Stores:
    """Faust's RocksDB store as the dedup table reads it: one real Rdict per partition."""

    def __init__(self, root: Path, partitions: int) -> None:
        from rocksdict import Options, Rdict

        self._dbs = {
            p: Rdict(str(root / f"p{p}"), Options(raw_mode=True)) for p in range(partitions)
        }
        self._key_index: dict[bytes, int] = {}

    def _db_for_partition(self, partition: int) -> Any:
        return self._dbs[partition]

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()


class _CountingProducer:
    """confluent-kafka's Producer as the table writer calls it, delivering at once."""

    def __init__(self) -> None:
        self.records = 0

    def produce(self, topic: str, value: Any, key: Any, partition: int, on_delivery: Any) -> None:
        self.records += 1

    def poll(self, timeout: float = 0) -> int:
        return 0


def dedup_costs(rows: list[tuple[str, str, str, str, int]]) -> dict[str, Any]:
    """µs per event of the id table's batched check + write, and its bytes per id."""
    import tempfile
    from types import SimpleNamespace

    from stream.core.dedup import DedupConfig, id_key
    from stream.core.types import EventBatch
    from stream.worker.dedup import DedupStore
    from stream.worker.state_store import UserPartitioner
    from stream.worker.table_writer import TableWriter

    partitions = 8
    partition_of = UserPartitioner(partitions)
    events = [
        Event(u, i, b, t, derive_event_id(u, i, b, t), c, 1.0)
        for u, i, c, b, t in sorted(rows, key=lambda r: r[4])  # as a topic interleaves them
    ]
    fetches = [EventBatch.of(events[n : n + FETCH]) for n in range(0, len(events), FETCH)]
    parts = [[partition_of(u) for u in f.user_id] for f in fetches]
    runs: list[float] = []
    stored = 0
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as tmp:
            stores = _Stores(Path(tmp), partitions)
            writer = TableWriter(_CountingProducer(), ack=lambda _marks: None)
            store = DedupStore(
                SimpleNamespace(data=stores), "dedup-changelog", writer, DedupConfig()
            )
            offset = 0
            start = time.perf_counter()
            for fetch, part in zip(fetches, parts, strict=True):
                offsets = list(range(offset, offset + len(fetch)))
                offset += len(fetch)
                store.check(fetch, part, part, offsets)
                store.write()
            runs.append((time.perf_counter() - start) / len(events) * 1e6)
            stored = sum(1 for db in stores._dbs.values() for _ in db.items())
            stores.close()
    runs.sort()
    key_bytes = statistics.mean(len(id_key(e.user_id, e.event_id)) for e in events)
    from stream.core.dedup import ENTRY_BYTES

    return {
        "events": len(events),
        "fetch": FETCH,
        "us_per_event": {"best": runs[0], "worst": runs[-1], "runs": runs},
        "ids_stored": stored,
        "bytes_per_id": key_bytes + ENTRY_BYTES,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT), help="where the JSON goes ('-': nowhere)")
    ap.add_argument("--only-sequence", action="store_true", help="the sequence section alone")
    args = ap.parse_args()
    rows = load_rows()
    batches = make_batches(rows)
    n = sum(len(v) for _, v in batches)
    parser = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES)
    items = {r[1] for r in rows}
    sequence = sequence_costs(rows, batches, parser, DictVectors(items, 64))
    on, off = sequence["on"], sequence["off"]
    print(
        f"sequence (d=64), best of {SEQUENCE_REPEATS}, on (50 events) / off (0): "
        + ", ".join(
            f"{name} {on[name]['best']:.2f} / {off[name]['best']:.2f}"
            for name in (
                "fold_us_per_event",
                "fold_sequence_step_us_per_event",
                "fold_batch_us_per_event",
                "fold_batch_sequence_step_us_per_event",
                "encode_us_per_state",
                "decode_us_per_state",
            )
        )
        + f"; state bytes median {on['state_bytes']['median']} / {off['state_bytes']['median']}, "
        f"p90 {on['state_bytes']['p90']} / {off['state_bytes']['p90']}, "
        f"max {on['state_bytes']['max']} / {off['state_bytes']['max']} "
        f"(median events kept {on['events_kept_median']})"
    )
    if args.only_sequence:
        if args.out != "-":
            Path(args.out).write_text(json.dumps({"sequence": sequence}, indent=2) + "\n")
        return
    base = {
        "json_loads": best_of(lambda: run_json(batches)) / n,
        "orjson_loads": best_of(lambda: run_orjson(batches)) / n,
        "naive_dict_update": best_of(lambda: run_naive(batches)) / n,
    }
    results: dict[str, object] = {
        "events": n,
        "batches": len(batches),
        "batch_size": BATCH,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "baseline_us_per_event": {k: v * 1e6 for k, v in base.items()},
        "by_dim": {},
        "sequence": sequence,
    }
    print(f"{n} events in {len(batches)} batches of <= {BATCH} (one user each)")
    print("baselines, us/event: " + ", ".join(f"{k} {v * 1e6:.2f}" for k, v in base.items()))
    for dim in (32, 64, 128):
        vectors = DictVectors(items, dim)
        full = best_of(lambda v=vectors: run_core(batches, parser, v)) / n
        stages = stage_costs(batches, parser, vectors)
        entry = {
            "core_us_per_event": full * 1e6,
            "stages_us_per_event": {k: v * 1e6 for k, v in stages.items()},
            "ratio_vs_json_loads": full / base["json_loads"],
            "ratio_vs_orjson_loads": full / base["orjson_loads"],
            "ratio_vs_naive": full / base["naive_dict_update"],
        }
        results["by_dim"][dim] = entry  # type: ignore[index]
        print(
            f"d={dim:3d}: decode+parse+fold+encode {full * 1e6:6.2f} us/event = "
            f"{entry['ratio_vs_json_loads']:.2f}x json.loads, "
            f"{entry['ratio_vs_orjson_loads']:.2f}x orjson.loads, "
            f"{entry['ratio_vs_naive']:.2f}x naive  ("
            + ", ".join(f"{k} {v * 1e6:.2f}" for k, v in stages.items())
            + ")"
        )
    table = run_core(batches, parser, DictVectors(items, 64))
    sizes = sorted(len(b) for b in table.values())
    states = [decode(b) for b in table.values()]
    size = {
        "users": len(sizes),
        "median": statistics.median(sizes),
        "p90": sizes[int(0.9 * (len(sizes) - 1))],
        "max": sizes[-1],
        "max_categories_held": max(len(s.categories) for s in states),
        "max_items_held": max(len(s.items) for s in states),
    }
    results["state_bytes_d64"] = size
    print(
        f"state bytes per user at d=64 ({size['users']} users): median {size['median']}, "
        f"p90 {size['p90']}, max {size['max']} (<= {size['max_categories_held']} categories, "
        f"<= {size['max_items_held']} items)"
    )
    dedup = dedup_costs(rows)
    results["dedup"] = dedup
    print(
        f"event-id table: check + write {dedup['us_per_event']['best']:.2f} "
        f"({dedup['us_per_event']['worst']:.2f}) us/event over {dedup['events']} events in "
        f"fetches of {FETCH}; {dedup['bytes_per_id']:.1f} bytes per remembered id "
        f"(key + entry), {dedup['ids_stored']} ids stored"
    )
    parse = parse_costs(rows)
    results["parse_us_per_record"] = {
        kind: {name: {"best": t[0], "worst": t[-1], "runs": t} for name, t in by.items()}
        for kind, by in parse.items()
    }
    print(f"parse alone, us/record, best (worst) of {REPEATS} over {PARSE_RECORDS} valid records:")
    for kind, by in parse.items():
        base = by["orjson_parse_0.2.0"][0]
        print(
            f"  {kind:23s} "
            + ", ".join(f"{name} {t[0]:.2f} ({t[-1]:.2f})" for name, t in by.items())
            + f"; parse_batch {base / by['parse_batch'][0]:.1f}x faster than 0.2.0"
        )
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
