"""Benchmark of the functional core: parse + fold + serialise per event, against baselines.

Run: ``python bench/bench_core.py``.  Events are the 114-user Taobao sample (synthetic
users when it is absent), sent as JSON records in batches of one user's events, the way
the apply agent sees them.  Every figure is measured in this run, so the ratios compare
like with like on whatever machine runs it.  Writes ``bench/results/core.json``.
"""

from __future__ import annotations

import csv
import gc
import json
import platform
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from stream.config import DEFAULT_ALIASES, DEFAULT_WEIGHTS
from stream.core.codec import decode, encode
from stream.core.events import EventParser
from stream.core.interest import InterestConfig, fold, new_state
from stream.core.types import Event

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "taobao_userbehavior_114users" / "UserBehavior.csv"
OUT = ROOT / "bench" / "results" / "core.json"
BATCH = 20
REPEATS = 5
NOW = 2_000_000_000_000


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
    batches: list[tuple[str, list[bytes]]], parser: EventParser, vectors: DictVectors
) -> dict[str, bytes]:
    """The apply agent's work per batch: decode, parse each record, fold, encode."""
    cfg = InterestConfig()
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


def stage_costs(
    batches: list[tuple[str, list[bytes]]], parser: EventParser, vectors: DictVectors
) -> dict[str, float]:
    """Seconds per event of each stage alone (parse, fold, encode, decode)."""
    n = sum(len(v) for _, v in batches)
    parsed = [[parser.parse(v, now_ms=NOW) for v in values] for _, values in batches]
    cfg = InterestConfig()

    def folds() -> dict[str, object]:
        states: dict[str, object] = {}
        for (user, _), events in zip(batches, parsed, strict=True):
            s = states.get(user) or new_state(user)
            fold(s, events, cfg, vectors=vectors)  # type: ignore[arg-type]
            states[user] = s
        return states

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


def main() -> None:
    rows = load_rows()
    batches = make_batches(rows)
    n = sum(len(v) for _, v in batches)
    parser = EventParser(DEFAULT_WEIGHTS, DEFAULT_ALIASES)
    items = {r[1] for r in rows}
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
