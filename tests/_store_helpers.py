"""Shared helpers for the store tests: Stats builders and spawn-safe workers.

Kept free of pytest imports so that ``multiprocessing`` spawn children import it
quickly.
"""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np

from streamnorm.stats import Stats, exact_moments


def oracle_stats(x: np.ndarray, histogram: bool = False, names=None) -> Stats:
    """Exact statistics of a 2-D (rows, features) integer array, from numpy and Fractions.

    Independent of streamnorm's accumulator: an oracle for integer data.
    """
    x = np.asarray(x)
    nf = x.shape[1]
    wide = x.astype(object)
    int_sum = tuple(int(v) for v in wide.sum(axis=0)) if len(x) else (0,) * nf
    int_sumsq = tuple(int(v) for v in (wide * wide).sum(axis=0)) if len(x) else (0,) * nf
    n = len(x)
    mean = [float(Fraction(s, n)) if n else float("nan") for s in int_sum]
    m2 = [float(Fraction(n * q - s * s, n)) if n else 0.0 for s, q in zip(int_sum, int_sumsq)]
    hist = None
    if histogram:
        offset = -128 if x.dtype == np.int8 else 0
        hist = np.stack([np.bincount(x[:, f].astype(np.int64) - offset, minlength=256)
                         for f in range(nf)])
    return Stats(
        layout="NF",
        feature_names=names or [str(i) for i in range(nf)],
        dtype=x.dtype.name,
        count=np.full(nf, n),
        nan_count=np.zeros(nf, dtype=np.int64),
        mean=mean,
        m2=m2,
        min=x.min(axis=0).astype(np.float64) if n else np.full(nf, np.nan),
        max=x.max(axis=0).astype(np.float64) if n else np.full(nf, np.nan),
        histogram=hist,
        int_sum=int_sum,
        int_sumsq=int_sumsq,
    )


def seal(table):
    """``table`` with its content checksum recomputed, so that a test's deliberate edit
    reaches the consistency checks behind the checksum (format 2 and later only)."""
    from streamnorm.statsfile import META_CHECKSUM, META_FORMAT_VERSION, content_checksum

    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    version = meta.get(META_FORMAT_VERSION, "1")
    if version.isdigit() and int(version) >= 2:
        meta[META_CHECKSUM] = content_checksum(table)
    return table.replace_schema_metadata(meta)


def multiset_stats(dtype: str, features, histogram: bool = False, nan_count=None,
                   names=None, layout: str = "NF") -> Stats:
    """Exact statistics of integer features given as ``[(value, multiplicity), ...]`` each.

    Reaches counts and exact sums far beyond what arrays could hold (up to 38
    digits) while staying consistent: what the accumulator would have given.
    """
    nf = len(features)
    count, sums, sumsqs, lo, hi = [], [], [], [], []
    for pairs in features:
        pairs = [(int(v), int(k)) for v, k in pairs if k > 0]
        count.append(sum(k for _, k in pairs))
        sums.append(sum(v * k for v, k in pairs))
        sumsqs.append(sum(v * v * k for v, k in pairs))
        lo.append(float(min(v for v, _ in pairs)) if pairs else float("nan"))
        hi.append(float(max(v for v, _ in pairs)) if pairs else float("nan"))
    moments = [exact_moments(n, s, q) for n, s, q in zip(count, sums, sumsqs)]
    hist = None
    if histogram:
        offset = -128 if dtype == "int8" else 0
        hist = np.zeros((nf, 256), dtype=np.int64)
        for f, pairs in enumerate(features):
            for v, k in pairs:
                hist[f, int(v) - offset] += k
    return Stats(
        layout=layout, feature_names=names or [str(i) for i in range(nf)], dtype=dtype,
        count=count, nan_count=np.zeros(nf, np.int64) if nan_count is None else nan_count,
        mean=[m for m, _ in moments], m2=[v for _, v in moments], min=lo, max=hi,
        histogram=hist, int_sum=tuple(sums), int_sumsq=tuple(sumsqs),
    )


def variant(which: int, n_features: int = 2000) -> Stats:
    """One of two distinct, deterministic statistics used by the concurrency tests."""
    rng = np.random.default_rng(which)
    x = rng.integers(0, 256, size=(64, n_features), dtype=np.uint8)
    return oracle_stats(x, histogram=which == 1)


# Each process runs for ``seconds`` and at least MIN_OPERATIONS times (a loaded
# machine may allow few operations in the time), within a hard cap.
MIN_OPERATIONS = 8
HARD_CAP_SECONDS = 60.0


def _keep_going(n: int, start: float, seconds: float) -> bool:
    elapsed = time.monotonic() - start
    return elapsed < HARD_CAP_SECONDS and (elapsed < seconds or n < MIN_OPERATIONS)


def writer(root: str, split: str, which: int, seconds: float, out) -> None:
    from streamnorm import StatsStore

    store = StatsStore(root)
    stats = variant(which)
    n = 0
    start = time.monotonic()
    try:
        while _keep_going(n, start, seconds):
            store.save(stats, split, overwrite=True)
            n += 1
        out.put(("writer", which, n, None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(("writer", which, n, repr(exc)))


def reader(root: str, split: str, seconds: float, out) -> None:
    from streamnorm import StatsStore

    store = StatsStore(root)
    expected = [variant(0), variant(1)]
    seen = [0, 0]
    errors = []
    start = time.monotonic()
    while _keep_going(sum(seen) + len(errors), start, seconds):
        try:
            got = store.load(split)
        except Exception as exc:  # noqa: BLE001 - every failed read is a test failure
            errors.append(repr(exc))
            continue
        for k, e in enumerate(expected):
            if got.equals(e):
                seen[k] += 1
                break
        else:
            errors.append("read statistics equal to neither writer's")
    out.put(("reader", seen, errors[:5], len(errors)))


def exclusive_creator(root: str, rounds: int, barrier, out) -> None:
    from streamnorm import StatsStore
    from streamnorm.errors import StatsFileError

    store = StatsStore(root)
    stats = variant(0, n_features=50)
    won = []
    for r in range(rounds):
        barrier.wait(timeout=30)
        try:
            store.save(stats, f"round-{r}")
            won.append(r)
        except StatsFileError:
            pass
    out.put(won)


def endless_writer(root: str, split: str, ready) -> None:
    """Alternate two statistics under ``split`` until killed."""
    from streamnorm import StatsStore

    store = StatsStore(root)
    stats = [variant(0), variant(1)]
    k = 0
    while True:
        store.save(stats[k % 2], split, overwrite=True)
        k += 1
        if k == 3:
            ready.set()
