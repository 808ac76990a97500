"""Brace expansion of source paths: ``train-{000000..000099}.tar``, ``{train,val}/x.tar``.

WebDataset names its shards with brace ranges (the ``braceexpand`` convention);
they are expanded here, before globbing, for every format alike.
"""

from __future__ import annotations

import re

from .base import SourceError

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
#: Upper bound on the paths one argument expands to (a typo like {0..99999999} fails fast).
MAX_EXPANSION = 1_000_000


def expand_braces(pattern: str) -> list[str]:
    """All paths a brace pattern names, in order.

    ``{a..b}`` (with an optional step ``{a..b..s}``) is an integer range,
    zero-padded to the width of its first bound when that has leading zeros;
    ``{x,y}`` is a list of alternatives; braces nest. A pattern without braces
    is returned as it is.

    Raises
    ------
    SourceError
        Unbalanced braces, or more than ``MAX_EXPANSION`` paths.

    Examples
    --------
    >>> expand_braces("train-{000..002}.tar")
    ['train-000.tar', 'train-001.tar', 'train-002.tar']
    >>> expand_braces("{a,b{1..2}}/x")
    ['a/x', 'b1/x', 'b2/x']
    >>> expand_braces("s3://bucket/plain.tar")
    ['s3://bucket/plain.tar']
    """
    out = _expand(pattern, pattern)
    if len(out) > MAX_EXPANSION:
        raise SourceError(f"{pattern}: expands to {len(out):,} paths (at most {MAX_EXPANSION:,})")
    return out


def _expand(text: str, whole: str) -> list[str]:
    start = text.find("{")
    if start < 0:
        if "}" in text:
            raise SourceError(f"{whole}: unbalanced '}}' in the path's braces")
        return [text]
    stop = _closing(text, start, whole)
    inner, head, tail = text[start + 1:stop], text[:start], _expand(text[stop + 1:], whole)
    if "}" in head:
        raise SourceError(f"{whole}: unbalanced '}}' in the path's braces")
    options = _alternatives(inner, whole)
    if options is None:  # "{x}": not a brace expression, kept literally (as braceexpand does)
        return [head + "{" + middle + "}" + rest
                for middle in _expand(inner, whole) for rest in tail]
    if len(options) * max(len(tail), 1) > MAX_EXPANSION:
        raise SourceError(f"{whole}: expands to more than {MAX_EXPANSION:,} paths")
    return [head + middle + rest for option in options
            for middle in _expand(option, whole) for rest in tail]


def _closing(text: str, start: int, whole: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise SourceError(f"{whole}: unbalanced '{{' in the path's braces")


def _alternatives(inner: str, whole: str) -> list[str] | None:
    """The options of ``{inner}``: a range's numbers, the comma list, or ``None`` for neither."""
    match = _RANGE.match(inner)
    if match:
        lo, hi = int(match[1]), int(match[2])
        step = abs(int(match[3])) if match[3] else 1
        if step == 0:
            raise SourceError(f"{whole}: a brace range's step must not be 0")
        width = len(match[1].lstrip("-")) if match[1].lstrip("-").startswith("0") else 0
        count = abs(hi - lo) // step + 1
        if count > MAX_EXPANSION:
            raise SourceError(f"{whole}: expands to {count:,} paths (at most {MAX_EXPANSION:,})")
        numbers = range(lo, hi + 1, step) if hi >= lo else range(lo, hi - 1, -step)
        return [f"{n:0{width}d}" for n in numbers]
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(inner[last:i])
            last = i + 1
    if not parts:
        return None
    return [*parts, inner[last:]]
