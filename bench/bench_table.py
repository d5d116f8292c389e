"""The Markdown table every benchmark here prints at its end (pasted as is into docs/)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` under ``header``, the first column padded to its widest cell so the source lines up."""
    width = max(len(str(cell)) for cell in [header[0], *(row[0] for row in rows)])
    lines = [
        f"| {header[0]:<{width}} | " + " | ".join(header[1:]) + " |",
        f"|{'-' * (width + 2)}|" + "---|" * (len(header) - 1),
    ]
    lines += [f"| {str(row[0]):<{width}} | " + " | ".join(str(cell) for cell in row[1:]) + " |" for row in rows]
    return "\n".join(lines)
