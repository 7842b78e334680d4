"""Progress of long steps (selection, evaluation, AutoAttack, bench): one interface, three renderings.

A *reporter* is a callable ``reporter(desc, total) -> task``; a task counts work with
``task.update(n, note)`` and ends with ``task.close()`` (or a ``with`` block). Library functions take an
optional reporter (``None``: silent) and know nothing about terminals:

    progress = make_progress("line")                 # or "auto", "bar", "none"
    with progress("AutoAttack apgd-ce", total=500) as task:
        for batch in batches:
            ...
            task.update(len(batch), note=f"robust {k}/500")

Modes: ``bar`` draws a tqdm bar on stderr; ``line`` prints ``desc: done/total (p%), elapsed, ~left | note``
at most once per ``interval`` seconds (default 10, so CI logs stay short) and once at the end if anything
was printed; ``none`` prints nothing; ``auto`` is ``bar`` on a terminal and ``line`` otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

MODES = ("auto", "bar", "line", "none")
LINE_INTERVAL = 10.0
"""Seconds between two progress lines of one task in ``line`` mode."""


class Task(Protocol):
    """One counted step of work."""

    def update(self, n: int = 1, note: str = "") -> None: ...
    def write(self, message: str) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Task: ...
    def __exit__(self, *exc: object) -> None: ...


Reporter = Callable[[str, "int | None"], Task]
"""``reporter(desc, total)`` starts a task; ``total`` None when the amount of work is not known."""


class _SilentTask:
    def update(self, n: int = 1, note: str = "") -> None:
        pass

    def write(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _SilentTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def silent(desc: str, total: int | None = None) -> Task:
    """The reporter of ``progress=none``: every task is a no-op."""
    return _SilentTask()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _LineTask:
    """Prints a status line at most every ``interval`` seconds, and a last one on close if it printed."""

    def __init__(self, desc: str, total: int | None, interval: float, stream: TextIO | None) -> None:
        self.desc, self.total, self.interval = desc, total, interval
        self.stream = stream
        self.done = 0
        self.note = ""
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.printed = False
        self.closed = False

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def line(self) -> str:
        """``desc: done/total (p%), elapsed, ~left | note`` (time left from the mean rate so far)."""
        elapsed = time.perf_counter() - self.t0
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and 0 < self.done < self.total:
            parts.append(f"~{_duration(elapsed * (self.total - self.done) / self.done)} left")
        text = ", ".join(parts)
        return f"{text} | {self.note}" if self.note else text

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if note:
            self.note = note
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            self.printed = True
            print(self.line(), file=self._out(), flush=True)

    def write(self, message: str) -> None:
        print(message, file=self._out(), flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.printed or time.perf_counter() - self.t0 >= self.interval:
            print(self.line() + (" | done" if not self.note else " (done)"), file=self._out(), flush=True)

    def __enter__(self) -> _LineTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BarTask:
    def __init__(self, desc: str, total: int | None, stream: TextIO | None) -> None:
        from tqdm import tqdm

        self.bar: Any = tqdm(total=total, desc=desc, leave=False, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1, note: str = "") -> None:
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.update(n)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> _BarTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_progress(mode: str = "auto", *, interval: float = LINE_INTERVAL,
                  stream: TextIO | None = None) -> Reporter:
    """The reporter for ``mode`` (auto, bar, line, none); ``interval``: seconds between lines in line mode;
    ``stream``: where to write (default: the current ``sys.stderr``, looked up at each write)."""
    if mode not in MODES:
        raise ValueError(f"progress must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        mode = "bar" if (stream or sys.stderr).isatty() else "line"
    if interval < 0:
        raise ValueError(f"progress interval must be >= 0 seconds, got {interval}")
    if mode == "none":
        return silent
    if mode == "bar":
        def bar(desc: str, total: int | None = None) -> Task:
            return _BarTask(desc, total, stream)

        return bar

    def line(desc: str, total: int | None = None) -> Task:
        return _LineTask(desc, total, interval, stream)

    return line


def reporter_or_silent(progress: Reporter | None) -> Reporter:
    """``progress`` itself, or the silent reporter when None (library functions default to silence)."""
    return silent if progress is None else progress


__all__ = ["LINE_INTERVAL", "MODES", "Reporter", "Task", "make_progress", "reporter_or_silent", "silent"]
