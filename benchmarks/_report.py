"""Markdown tables for the benchmark results.

>>> print(md_table([{"case": "a", "GB/s": 1.5}, {"case": "b"}]))
| case | GB/s |
|---|---|
| a | 1.5 |
| b |  |
"""

from __future__ import annotations


def md_table(rows: list[dict]) -> str:
    """A Markdown table of ``rows``, one column per key of the first row (missing cells empty)."""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)
