"""Tables as the commands print them: ``rich``, no borders, upper-case headers, never wrapped."""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def render(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table, box

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name.upper(), no_wrap=True)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    buffer = StringIO()
    Console(file=buffer, width=200, color_system=None).print(table)
    return buffer.getvalue().rstrip()
