"""The one table writer behind every table the scripts print or write: markdown for people, CSV for programs."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

TABLE_FORMATS = ('markdown', 'csv')


def render_table(header: Sequence[str], rows: Sequence[Sequence[object]], fmt: str = 'markdown') -> str:
    """``header`` and ``rows`` (cells already formatted; ``None`` is an empty cell) as a table.

    Markdown: columns padded to their widest cell, the first left-aligned and the others right-aligned (numbers line
    up on their decimal points), and ``|`` inside a cell escaped. CSV: the cells as they are.
    """
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; use 'markdown' or 'csv'")
    lines = [[str(cell) for cell in header], *[['' if cell is None else str(cell) for cell in row] for row in rows]]
    if any(len(line) != len(lines[0]) for line in lines):
        raise ValueError(f'every row needs {len(lines[0])} cells, one per column: {lines[0]}')
    if fmt == 'csv':
        out = io.StringIO()
        csv.writer(out, lineterminator='\n').writerows(lines)
        return out.getvalue().rstrip('\n')
    lines = [[cell.replace('|', '\\|') for cell in line] for line in lines]
    widths = [max(3, *(len(line[i]) for line in lines)) for i in range(len(lines[0]))]
    rule = [':' + '-' * (widths[0] - 1)] + ['-' * (width - 1) + ':' for width in widths[1:]]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
        return '| ' + ' | '.join(padded) + ' |'

    return '\n'.join(line(cells) for cells in [lines[0], rule, *lines[1:]])
