"""The ``sources/`` package (issue 11, design): one protocol, one module per format.

- checkpoint descriptions are what the single-module ``sources.py`` wrote, so
  checkpoints written before the split still resume;
- a new format is one ``Format`` subclass plus one ``register`` call, and the
  engine (threads, checkpoint, resume) runs it without knowing it;
- the engine and the command line never branch on a kind of file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _describe_cases import describe_all, write_inputs
from offline_helpers import SRC
from streamnorm import engine
from streamnorm.errors import StreamnormError
from streamnorm.sources import (
    FileInfo,
    Format,
    OpenRequest,
    ReadOptions,
    Shard,
    ShardResult,
    Source,
    SourceError,
    get_format,
    open_source,
    register,
    resolve_files,
    unregister,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sources-describe-v1.json"


# ---------------------------------------------------------------------------
# checkpoints written before the split
# ---------------------------------------------------------------------------


def test_source_descriptions_match_the_single_module_sources(tmp_path):
    write_inputs(tmp_path)
    assert describe_all(tmp_path) == json.loads(FIXTURE.read_text())


def test_image_run_ids_are_named_by_the_sha1_of_their_urls(tmp_path):
    write_inputs(tmp_path)
    source = open_source([tmp_path / "img"], images_per_shard=3)
    shard = source.shards[0]
    digest = hashlib.sha1("\n".join(f.url for f in shard.files).encode()).hexdigest()[:12]
    assert shard.id == f"image:{shard.files[0].url}..{shard.files[-1].url}#3:{digest}"


def test_checkpoint_of_the_single_module_sources_resumes(tmp_path):
    """A manifest whose source description came from ``sources.py`` is accepted as it is."""
    write_inputs(tmp_path)
    data = tmp_path / "pq"
    first = engine.compute([data], shard_bytes=1, workers=1, checkpoint=tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    expected = json.loads(FIXTURE.read_text())["table"]
    from _describe_cases import normalized

    described = {k: v for k, v in manifest["run"]["source"].items()}
    assert normalized({**described, "shards": []}, str(tmp_path)) == {**expected, "shards": []}
    again = engine.compute([data], shard_bytes=1, workers=1, checkpoint=tmp_path / "ck")
    assert again.resumed == first.shards and again.stats.equals(first.stats)


# ---------------------------------------------------------------------------
# a format added from outside: one module, one registration
# ---------------------------------------------------------------------------


class TextFormat(Format):
    """Toy format: ``.txt`` files of 32-bit integers, one row per line, one shard per file."""

    kind = "txt"
    suffixes = (".txt",)
    magic = (b"#txt",)
    noun = "text (.txt)"
    folder_noun = "text (.txt)"
    plural = "text files"

    def open(self, files: Sequence[FileInfo], request: OpenRequest) -> Source:
        options = ReadOptions(layout="NF", batch_bytes=request.batch_bytes,
                              feature_names=("a", "b"))
        shards = tuple(Shard(self.kind, (f,), 0, 1, options, request.storage_options, f.size)
                       for f in files)
        return Source(self.kind, "NF", ("a", "b"), shards, options, request.storage_options)

    def batches(self, shard: Shard, skip_bad: bool) -> Iterator[np.ndarray]:
        text = Path(shard.files[0].url.removeprefix("file://")).read_text()
        rows = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
        yield np.array(rows, dtype=np.int32).reshape(-1, 2)

    def reduce(self, shard: Shard, histogram: bool, nan_policy: str, skip_bad: bool,
               read_threads: bool) -> ShardResult:
        from streamnorm import StatsAccumulator

        acc = StatsAccumulator(layout="NF", feature_names=["a", "b"], nan_policy=nan_policy)
        rows = 0
        for batch in self.batches(shard, skip_bad):
            acc.update(batch)
            rows += len(batch)
        return ShardResult(shard.id, (acc.result(),), rows, shard.nbytes)


@pytest.fixture
def text_format():
    fmt = register(TextFormat())
    try:
        yield fmt
    finally:
        unregister(fmt.kind)


def _write_text(folder: Path, chunks: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(chunks):
        lines = ["#txt"] + [f"{a} {b}" for a, b in chunk.tolist()]
        (folder / f"part-{i:03d}.txt").write_text("\n".join(lines) + "\n")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1),
       workers=st.integers(1, 3))
def test_a_registered_format_runs_through_the_engine_with_resume(
        tmp_path_factory, text_format, sizes, seed, workers):
    rng = np.random.default_rng(seed)
    chunks = [rng.integers(-2**31, 2**31, (n, 2)) for n in sizes]
    root = tmp_path_factory.mktemp("txt")
    _write_text(root / "data", chunks)
    ckpt = root / "ck"
    first = engine.compute([root / "data"], workers=workers, checkpoint=ckpt)
    again = engine.compute([root / "data"], workers=workers, checkpoint=ckpt)
    values = np.concatenate(chunks)
    assert first.source.kind == "txt" and first.shards == len(sizes)
    assert again.resumed == len(sizes) and again.stats.equals(first.stats)
    assert first.rows == len(values)
    assert first.stats.count.tolist() == [len(values)] * 2
    # integer data: the exact mean, as Python integers give it
    exact = [sum(int(v) for v in values[:, j]) / len(values) for j in range(2)]
    assert first.stats.mean.tolist() == exact
    assert first.stats.min.tolist() == values.min(axis=0).astype(float).tolist()


def test_a_registered_format_is_recognized_by_suffix_and_by_magic(tmp_path, text_format):
    _write_text(tmp_path / "d", [np.arange(4).reshape(2, 2)])
    renamed = tmp_path / "data.dat"
    renamed.write_bytes((tmp_path / "d" / "part-000.txt").read_bytes())
    assert [k for k, _ in resolve_files([tmp_path / "d"])] == ["txt"]
    assert [k for k, _ in resolve_files([renamed])] == ["txt"]
    assert open_source([renamed]).shards[0].compute().stats.mean.tolist() == [1.0, 2.0]


def test_unknown_files_are_refused_naming_every_registered_format(tmp_path, text_format):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"nothing known")
    with pytest.raises(SourceError, match=r"junk\.bin: not a Parquet, image \(PNG.*\), \.npy.* "
                                          r"or text \(\.txt\) file; pass Parquet files, image files, "
                                          r"\.npy arrays.* or text files"):
        resolve_files([junk])


def test_registering_a_kind_twice_is_refused(text_format):
    with pytest.raises(StreamnormError, match="'txt' is registered already"):
        register(TextFormat())


def test_unknown_kind_is_a_source_error_listing_the_known_ones():
    with pytest.raises(SourceError, match=r"unknown source kind 'zarr'; known: .*image, npy, parquet"):
        get_format("zarr")


# ---------------------------------------------------------------------------
# the engine and the command line stay format-agnostic
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["engine.py", "cli.py"])
def test_engine_and_cli_never_branch_on_a_kind_of_file(module):
    text = (Path(SRC) / "streamnorm" / module).read_text()
    assert not re.search(r"\bkind\s*(==|!=|\bin\b)", text)
    assert not re.search(r"image_column\s+is\s+(not\s+)?None", text)
    assert not re.search(r"[\"'](parquet|image|npy)[\"']", text)


def test_the_single_module_is_gone():
    assert not (Path(SRC) / "streamnorm" / "sources.py").exists()
    assert (Path(SRC) / "streamnorm" / "sources" / "__init__.py").exists()
