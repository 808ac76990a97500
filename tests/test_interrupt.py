"""Ctrl-C during ``streamnorm compute`` (issue 8, item 20) and the Dask engine's
scratch folders (item 24, engine side).

A terminal's Ctrl-C sends SIGINT to the whole process group; the tests do the
same (``os.killpg``) to a CLI started in its own session, once a few shards
are in the checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streamnorm as sn
from offline_helpers import SRC, run_cli
from streamnorm import engine


def write_files(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(start)
    for k in range(start, start + n):
        pq.write_table(pa.table({"x": rng.standard_normal(500), "k": rng.integers(0, 9, 500)}),
                       folder / f"p{k:04d}.parquet")


def env_with_tmp(tmp: Path) -> dict[str, str]:
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["TMPDIR"] = str(tmp)
    return env


def interrupt(args: list[str], checkpoint: Path, env: dict[str, str], shards: int = 3,
              timeout: float = 180) -> subprocess.CompletedProcess | None:
    """Run the CLI, send SIGINT to its process group once ``shards`` are checkpointed.

    Returns None when the run finished before the signal could be sent.
    """
    proc = subprocess.Popen([sys.executable, "-m", "streamnorm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = checkpoint / "done"
            if done.is_dir() and len(list(done.glob("*.json"))) >= shards:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            proc.communicate()
            return None
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("engine_name", ["dask", "local"])
def test_ctrl_c_prints_one_line_and_rerunning_resumes(tmp_path, engine_name):
    data = tmp_path / "data"
    n_files = 300
    write_files(data, n_files)
    env = env_with_tmp(tmp_path / "tmp")
    ckpt = tmp_path / "ckpt"
    args = ["compute", str(data), "--store", str(tmp_path / "store"), "--split", "train",
            "--engine", engine_name, "--workers", "2", "--checkpoint", str(ckpt), "--no-progress"]
    res = interrupt(args, ckpt, env)
    for _ in range(2):  # finished before the signal: a bigger source (bounded)
        if res is not None:
            break
        write_files(data, n_files, start=n_files)
        n_files *= 2
        for path in (ckpt, tmp_path / "store"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
        res = interrupt(args, ckpt, env)
    assert res is not None, "the run always finished before it could be interrupted"
    kept = len(list((ckpt / "done").glob("*.json")))
    assert res.returncode == 130, res.stderr
    assert res.stderr == (f"streamnorm: interrupted: {kept} of {n_files} shards are kept in the "
                          f"checkpoint {ckpt}; run the same command again to resume\n")
    assert res.stdout == ""
    assert not list((tmp_path / "tmp").iterdir()), "scratch files left behind"

    again = run_cli(*args[:-5], "--engine", "local", "--workers", "2", "--checkpoint", str(ckpt),
                    "--no-progress", env={"TMPDIR": str(tmp_path / "tmp")})
    assert again.returncode == 0, again.stderr
    assert f", {kept} from the checkpoint" in again.stdout
    whole = engine.compute([data], workers=1).stats
    assert sn.load_stats(tmp_path / "store", "train").equals(whole)


def test_interrupt_without_checkpoint_says_nothing_was_kept():
    exc = engine.Interrupted(4, 10, None)
    assert isinstance(exc, KeyboardInterrupt)
    assert str(exc) == ("interrupted after 4 of 10 shards; nothing was kept (pass --checkpoint "
                        "DIR to make a run resumable)")


def test_dask_engine_leaves_no_scratch_space(tmp_path):
    # item 24: the LocalCluster works in a private temporary folder, removed afterwards
    write_files(tmp_path / "data", 4)
    env = {"TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    res = run_cli("compute", str(tmp_path / "data"), "--store", str(tmp_path / "store"),
                  "--split", "train", "--engine", "dask", "--workers", "1", "--no-progress",
                  cwd=str(tmp_path), env=env)
    assert res.returncode == 0, res.stderr
    assert not list((tmp_path / "tmp").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "store", "tmp"]


def test_interrupt_counts_the_shards_the_checkpoint_holds(tmp_path, monkeypatch):
    """A Ctrl-C landing after a shard's marker is written but before the pass counts the
    shard (e.g. while the folder is fsynced) still reports every shard kept."""
    write_files(tmp_path / "data", 6)
    ckpt = tmp_path / "ckpt"
    original = engine.Checkpoint.record
    recorded = []

    def record_then_ctrl_c(self, result):
        original(self, result)
        recorded.append(result.shard_id)
        if len(recorded) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine.Checkpoint, "record", record_then_ctrl_c)
    with pytest.raises(engine.Interrupted) as info:
        engine.compute([tmp_path / "data"], workers=1, checkpoint=ckpt)
    assert len(list((ckpt / "done").glob("*.json"))) == 3
    assert (info.value.done, info.value.total) == (3, 6)
    monkeypatch.setattr(engine.Checkpoint, "record", original)
    again = engine.compute([tmp_path / "data"], workers=1, checkpoint=ckpt)
    assert again.resumed == 3
    assert again.stats.equals(engine.compute([tmp_path / "data"], workers=1).stats)


def _log_callback_error(exc: BaseException, callback: str) -> list[str]:
    """What tornado's error handler writes for a failing loop callback, as it logs it."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("tornado.application")
    handler = Keep()
    logger.addHandler(handler)
    try:
        try:
            raise exc
        except BaseException:
            logger.error("Exception in callback %r", callback, exc_info=True)
    finally:
        logger.removeHandler(handler)
    return seen


def test_dask_sync_cancel_race_is_not_reported_during_a_pass():
    """distributed's sync() cancel callback failing on an early Ctrl-C (NameError) is dropped;
    every other loop error is still reported."""
    race = NameError("cannot access free variable 'future'")
    cancel = "functools.partial(<function sync.<locals>.cancel at 0x7f>)"
    assert _log_callback_error(race, cancel)  # tornado reports it outside a pass
    with engine._quiet_sync_cancel_race():
        assert _log_callback_error(race, cancel) == []
        assert _log_callback_error(ValueError("real"), cancel)
        assert _log_callback_error(NameError("x"), "functools.partial(<function other>)")
    assert _log_callback_error(race, cancel)
