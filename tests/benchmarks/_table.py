"""A plain-text table for the benchmark scripts: the first column left-aligned, the others right."""

from __future__ import annotations


def aligned(rows: list[list[str]]) -> str:
    """``rows[0]`` is the header; a rule goes under it."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
