"""`print_table`: the plain-text tables of summaries, `fab hosts` and `fab releases`.

A module of its own so that `fab hosts` prints its table without loading the
runner (threads, the SSH layer's callers, the run record): start-up, issue 17."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import Output


def print_table(head: list[str], rows: list[list[str]], out: Output | None = None, title: str = "") -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for r in rows:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())
    text = "\n".join(lines)
    if out:
        out.line("", text)
    else:
        print(text)
