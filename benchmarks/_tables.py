"""Markdown tables printed by the benchmark scripts."""

from __future__ import annotations

from typing import Any


def markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of dict rows (columns: the keys of the first row)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)
