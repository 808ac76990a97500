"""Inputs whose checkpoint descriptions are pinned by tests/fixtures/sources-describe-v1.json.

Run as a script with a ``src`` folder to print the normalized descriptions that
this version of ``streamnorm.sources`` gives (the fixture was written by the
single-module ``sources.py`` that preceded the ``sources/`` package).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from offline_helpers import png_bytes

#: (name, paths relative to the data folder, open_source arguments)
CASES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("table", ["pq"], {"shard_bytes": 1}),
    ("table-columns", ["pq/t.parquet"], {"columns": ["b", "a"]}),
    ("tensor", ["tensor.parquet"], {"columns": ["t"], "layout": "NCL"}),
    ("images", ["img"], {"images_per_shard": 3}),
    ("images-gray", ["img/0.png"], {"image_mode": "L"}),
    ("image-column", ["col"], {"image_column": "image", "shard_bytes": 1}),
    ("npy", ["npy/a.npy"], {}),
    ("npy-layout", ["npy/b.npy"], {"layout": "CN"}),
]


def write_inputs(d: Path) -> None:
    """Small deterministic inputs of every kind under ``d``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for sub in ("pq", "img", "npy", "col"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"a": rng.integers(0, 100, 200), "b": rng.normal(size=200)}),
                   d / "pq" / "t.parquet", row_group_size=50)
    tensors = pa.FixedSizeListArray.from_arrays(
        pa.array(rng.integers(0, 9, 10 * 12).astype(np.uint8)), 12)
    shaped = pa.FixedSizeListArray.from_arrays(tensors, 1)  # (1, 12): a 2-D tensor per row
    pq.write_table(pa.table({"t": shaped}), d / "tensor.parquet", row_group_size=4)
    for i in range(7):
        (d / "img" / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 255, (4, 4, 3), np.uint8)))
    np.save(d / "npy" / "a.npy", rng.normal(size=(30, 4)))
    np.save(d / "npy" / "b.npy", rng.normal(size=(3, 30)))
    images = [png_bytes(rng.integers(0, 255, (4, 4, 3), np.uint8)) for _ in range(12)]
    pq.write_table(pa.table({"image": images}), d / "col" / "c.parquet", row_group_size=4)


def normalized(description: Any, root: str) -> Any:
    """``description`` with the data folder, sizes, versions and URL digests as placeholders."""
    text = json.dumps(description, sort_keys=True).replace(root, "<data>")
    # a run of image files is named by the sha1 of its URLs, which hold the data folder
    text = re.sub(r"(#\d+):[0-9a-f]{12}", r"\1:<sha1>", text)
    value = json.loads(text)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("<size>" if k == "size" else "<version>" if k == "version" else walk(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(value)


def describe_all(d: Path) -> dict[str, Any]:
    """``{case: normalized Source.describe()}``: what a checkpoint manifest is made of."""
    from streamnorm.sources import open_source

    out = {}
    for name, paths, kwargs in CASES:
        source = open_source([str(d / p) for p in paths], **kwargs)
        out[name] = normalized(source.describe(), str(d))
    return out


if __name__ == "__main__":  # python tests/_describe_cases.py SRC DATA_DIR
    sys.path.insert(0, sys.argv[1])
    data = Path(sys.argv[2])
    write_inputs(data)
    print(json.dumps(describe_all(data), indent=1, sort_keys=True))
