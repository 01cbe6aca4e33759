"""rich progress bars with ETA for every loop longer than a few seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)

Advance = Callable[..., None]


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """Yields advance(n=1, info='...'); a no-op when disabled (e.g. non-main DDP ranks, tests) and where stderr is
    not a terminal (a log file gets the one line per run the commands print, no bars and no blank lines)."""
    if not enabled or not console.is_terminal:
        yield lambda n=1, info="": None
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str = "") -> None:
            bar.update(task, advance=n, info=info)

        yield advance
