"""Plain-text tables, as the nodes show them on the canvas and the CLI prints them: one formatter for all."""
from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], *, align: str = "", title: str = "",
               empty: str = "") -> str:
    """Columns as wide as their widest cell, two spaces apart; ``align`` gives each column ``l`` or ``r`` (default
    right: numbers line up). ``title`` comes first; ``empty`` stands under the header when there are no rows."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    sides = align.ljust(len(header), "r")
    lines = [title] if title else []
    lines += ["  ".join(c.ljust(w) if side == "l" else c.rjust(w) for c, w, side in zip(row, widths, sides)).rstrip()
              for row in cells]
    if not rows and empty:
        lines.append(empty)
    return "\n".join(lines)
