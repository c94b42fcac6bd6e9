"""A rich progress bar for long loops (iteration, loss, ETA) that can be silenced."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class LoopProgress:
    """Context manager: ``with LoopProgress("dm", total, start) as p: p.update(loss)``.

    With ``enabled=False`` it does nothing (``--quiet``).
    """

    def __init__(self, description: str, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.total, self.start, self.description = total, start, description
        self._progress: Progress | None = None

    def __enter__(self) -> LoopProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total,
                                                 completed=self.start, loss="-")
        return self

    def update(self, loss: float | None = None, advance: int = 1) -> None:
        if self._progress is not None:
            shown = "-" if loss is None else f"{loss:.4g}"
            self._progress.update(self._task, advance=advance, loss=shown)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
