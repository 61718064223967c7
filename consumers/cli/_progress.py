"""A progress bar for long commands (replay, backfill, export): records, rate, ETA.

Drawn on stderr only when stderr is a terminal, so scripts and ``--json``
output never see it; elsewhere the calls cost next to nothing.
"""

from __future__ import annotations

from types import TracebackType

from consumers.cli._options import err_console
from consumers._deps import require

_progress = require("rich.progress", "cli")
_text = require("rich.text", "cli")


class _RateColumn(_progress.ProgressColumn):
    """Records a second, from rich's moving estimate."""

    def render(self, task: _progress.Task) -> _text.Text:
        speed = task.finished_speed or task.speed
        return _text.Text("" if speed is None else f"{speed:,.0f} rec/s", style="progress.data.speed")


class _CountColumn(_progress.ProgressColumn):
    def render(self, task: _progress.Task) -> _text.Text:
        total = "?" if task.total is None else f"{int(task.total):,}"
        return _text.Text(f"{int(task.completed):,}/{total}", style="progress.download")


class Progress:
    """``with Progress("replay", total) as bar: bar.advance(n)``; `total` None when unknown."""

    def __init__(self, description: str, total: int | None, enabled: bool | None = None) -> None:
        self._enabled = err_console.is_terminal if enabled is None else enabled
        self._bar = None
        self._task = None
        self._description = description
        self._total = total

    def __enter__(self) -> Progress:
        if self._enabled:
            self._bar = _progress.Progress(
                _progress.TextColumn("[bold]{task.description}"),
                _progress.BarColumn(),
                _CountColumn(),
                _RateColumn(),
                _progress.TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self._description, total=self._total)
        return self

    def advance(self, n: int) -> None:
        """Count `n` more records done."""
        if self._bar is not None and n:
            self._bar.advance(self._task, n)

    def set_total(self, total: int | None) -> None:
        """Change the expected total (e.g. once it is known)."""
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
