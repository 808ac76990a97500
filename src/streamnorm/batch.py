"""Picking the tensor to reduce or normalize out of a structured batch.

DataLoaders yield a tensor, a tuple/list (``(images, labels)``) or a dict
(``{"image": ..., "label": ...}``). ``key`` names the element: an ``int`` for
tuples and lists, a ``str`` for dicts, ``None`` for a bare tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import StreamnormError

__all__ = ["pick", "replace", "Key"]

Key = int | str | None


def _describe(batch: Any) -> str:
    if isinstance(batch, Mapping):
        return f"a dict with keys {list(batch)[:8]}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)} elements"
    return f"a {type(batch).__name__}"


def pick(batch: Any, key: Key) -> Any:
    """The element of ``batch`` at ``key`` (the batch itself for ``key=None``).

    Raises
    ------
    StreamnormError
        When ``key`` does not fit the batch, naming what the batch holds.

    Examples
    --------
    >>> pick(({"a": 1}, 2), 1)
    2
    >>> pick({"image": 3}, "image")
    3
    """
    if key is None:
        if isinstance(batch, (Mapping, tuple, list)):
            raise StreamnormError(
                f"the batch is {_describe(batch)}; pass key= to say which element holds "
                f"the data (an int for tuples/lists, a str for dicts)"
            )
        return batch
    if isinstance(batch, Mapping):
        if isinstance(key, str) and key in batch:
            return batch[key]
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        if isinstance(key, int) and not isinstance(key, bool) and -len(batch) <= key < len(batch):
            return batch[key]
    raise StreamnormError(f"key {key!r} does not fit the batch, which is {_describe(batch)}")


def replace(batch: Any, key: Key, value: Any) -> Any:
    """A shallow copy of ``batch`` with the element at ``key`` replaced.

    Tuples stay tuples (named tuples keep their type), lists stay lists,
    mappings keep their type where it can be rebuilt from a dict.

    Examples
    --------
    >>> replace((1, 2), 0, 9)
    (9, 2)
    >>> replace({"x": 1, "y": 2}, "y", 0)
    {'x': 1, 'y': 0}
    """
    pick(batch, key)  # validates key against the batch
    if key is None:
        return value
    if isinstance(batch, Mapping):
        out = dict(batch)
        out[key] = value
        try:
            return type(batch)(out)
        except TypeError:
            return out
    items = list(batch)
    items[key] = value
    if isinstance(batch, tuple):
        return type(batch)(*items) if hasattr(batch, "_fields") else tuple(items)
    return items
