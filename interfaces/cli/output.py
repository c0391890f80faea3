"""Readable terminal output: aligned tables and a progress bar."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import TextIO


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO = sys.stdout
) -> None:
    """Print rows under headers in aligned columns; the last column takes what is left
    of the terminal's width and is cut with an ellipsis."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    if out.isatty():
        room = shutil.get_terminal_size().columns - sum(widths[:-1]) - 2 * (len(widths) - 1)
        widths[-1] = max(10, min(widths[-1], room))

    def line(values: Sequence[str]) -> str:
        parts = []
        for value, width in zip(values, widths, strict=True):
            if len(value) > width:
                value = value[: width - 1] + "…"
            parts.append(value.ljust(width))
        return "  ".join(parts).rstrip()

    print(line(list(headers)), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for row in cells:
        print(line(row), file=out)


def stream_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    out: TextIO = sys.stdout,
    sample: int = 1000,
) -> None:
    """As ``table``, for rows that come without end: the columns are as wide as the first
    ``sample`` rows need, and later rows are printed as they come (a wider cell pushes
    the rest of its line right rather than being cut)."""
    it = iter(rows)
    first = list(islice(it, sample))
    cells = [[str(c) for c in row] for row in first]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    room: int | None = None
    if out.isatty():
        room = shutil.get_terminal_size().columns - sum(widths[:-1]) - 2 * (len(widths) - 1)
        room = max(10, room)
        widths[-1] = min(widths[-1], room)

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) for v, w in zip(values[:-1], widths, strict=False)]
        last = values[-1]
        if room is not None and len(last) > room:
            last = last[: room - 1] + "…"
        return "  ".join([*parts, last]).rstrip()

    print(line(list(headers)), file=out)
    print(line(["-" * w for w in widths]), file=out)
    for cell_row in cells:
        print(line(cell_row), file=out)
    for row in it:
        print(line([str(c) for c in row]), file=out)


class Progress:
    """``[#####.....] done/total  rate/s`` on stderr, redrawn in place on a terminal and
    printed every few seconds otherwise."""

    def __init__(self, label: str, out: TextIO = sys.stderr) -> None:
        self.label = label
        self.out = out
        self.started = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        final = done >= total
        if not final and now - self._last < (0.1 if self.out.isatty() else 2.0):
            return
        self._last = now
        width = 30
        filled = width * done // total if total else width
        rate = done / (now - self.started) if now > self.started else 0.0
        bar = "#" * filled + "." * (width - filled)
        text = f"{self.label} [{bar}] {done:,}/{total:,}  {rate:,.0f}/s"
        if self.out.isatty():
            print("\r" + text, end="\n" if final else "", file=self.out, flush=True)
        else:
            print(text, file=self.out, flush=True)
