"""Concurrent writers and readers in separate processes: every read is a whole, valid file."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue

import numpy as np
import pytest

import _store_helpers as helpers
import streamnorm as sn

SECONDS = 2.5


def _collect(out, n, processes, timeout=60):
    results = []
    try:
        for _ in range(n):
            results.append(out.get(timeout=timeout))
    except queue.Empty:
        pytest.fail(f"worker processes did not report in {timeout} s: {results}")
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def test_two_writers_and_a_reader(tmp_path):
    ctx = mp.get_context("spawn")
    root = str(tmp_path / "store")
    store = sn.StatsStore(root)
    store.save(helpers.variant(0), "train")  # the reader never sees a missing file
    out = ctx.Queue()
    processes = [
        ctx.Process(target=helpers.writer, args=(root, "train", 0, SECONDS, out)),
        ctx.Process(target=helpers.writer, args=(root, "train", 1, SECONDS, out)),
        ctx.Process(target=helpers.reader, args=(root, "train", SECONDS, out)),
    ]
    for p in processes:
        p.start()
    results = _collect(out, 3, processes)
    writers = [r for r in results if r[0] == "writer"]
    (reader,) = [r for r in results if r[0] == "reader"]
    for _, which, n, error in writers:
        assert error is None, f"writer {which} failed: {error}"
        assert n > 5, f"writer {which} wrote only {n} times"
    _, seen, errors, n_errors = reader
    assert n_errors == 0, errors
    assert sum(seen) > 5, seen
    final = store.load("train")
    assert final.equals(helpers.variant(0)) or final.equals(helpers.variant(1))
    assert os.listdir(os.path.join(root, "split=train")) == ["stats.parquet"]


def test_racing_exclusive_creators_one_wins_each_round(tmp_path):
    ctx = mp.get_context("spawn")
    root = str(tmp_path / "store")
    rounds = 15
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    processes = [ctx.Process(target=helpers.exclusive_creator, args=(root, rounds, barrier, out))
                 for _ in range(2)]
    for p in processes:
        p.start()
    won_a, won_b = _collect(out, 2, processes)
    assert sorted(won_a + won_b) == list(range(rounds)), (won_a, won_b)
    store = sn.StatsStore(root)
    assert store.splits() == sorted(f"round-{r}" for r in range(rounds))
    expected = helpers.variant(0, n_features=50)
    assert all(store.load(f"round-{r}").equals(expected) for r in range(rounds))
    leftovers = [name for r in range(rounds)
                 for name in os.listdir(os.path.join(root, f"split=round-{r}"))
                 if name != "stats.parquet"]
    assert leftovers == []


def test_threads_writing_memory_store():
    import threading

    store = sn.StatsStore("memory://concurrency/threads")
    variants = [helpers.variant(0, 300), helpers.variant(1, 300)]
    store.save(variants[0], "train", overwrite=True)
    stop = threading.Event()
    errors = []

    def write(k):
        while not stop.is_set():
            store.save(variants[k], "train", overwrite=True)

    def read():
        while not stop.is_set():
            got = store.load("train")
            if not any(got.equals(v) for v in variants):
                errors.append("torn read")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    stop.wait(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert np.array_equal(store.load("train").count, variants[0].count)


def test_writer_killed_mid_write_leaves_a_whole_file(tmp_path):
    ctx = mp.get_context("spawn")
    root = str(tmp_path / "store")
    store = sn.StatsStore(root)
    expected = [helpers.variant(0), helpers.variant(1)]
    for delay in (0.0, 0.013, 0.029):
        ready = ctx.Event()
        p = ctx.Process(target=helpers.endless_writer, args=(root, "train", ready))
        p.start()
        try:
            assert ready.wait(60), "writer did not start"
            p.join(timeout=delay)
        finally:
            p.kill()  # SIGKILL: no cleanup runs in the writer
            p.join()
        got = store.load("train")
        assert any(got.equals(e) for e in expected)
        assert store.splits() == ["train"]
