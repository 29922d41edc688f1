"""One deadline type for every wait in the harness.

A `Deadline` is monotonic and is passed down from the caller, so nested waits
share one budget (labgrid's Timeout idea).  Every budget is scaled by the lab's
single timeout factor, set once from the lab config.
"""
from __future__ import annotations

import time

_FACTOR = 1.0


def set_factor(factor: float) -> None:
    global _FACTOR
    if factor <= 0:
        raise ValueError(f"timeout factor must be > 0, got {factor}")
    _FACTOR = float(factor)


def factor() -> float:
    return _FACTOR


class WaitTimeout(TimeoutError):
    """A wait ran out of time; the message says what was waited for."""


class Deadline:
    def __init__(self, seconds: float, what: str = "operation", scaled: bool = True):
        self.budget = seconds * (_FACTOR if scaled else 1.0)
        self.what = what
        self._end = time.monotonic() + self.budget

    @property
    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def sub(self, seconds: float, what: str) -> "Deadline":
        """A shorter deadline inside this one (never longer than what is left)."""
        d = Deadline(0, what, scaled=False)
        d.budget = min(seconds * _FACTOR, self.remaining)
        d._end = time.monotonic() + d.budget
        return d

    def fail(self, detail: str = "") -> WaitTimeout:
        msg = f"timed out after {self.budget:.1f}s waiting for {self.what}"
        if detail:
            msg += f": {detail}"
        return WaitTimeout(msg)

    def __repr__(self) -> str:
        return f"Deadline({self.what!r}, {self.remaining:.1f}s left of {self.budget:.1f}s)"


def poll(check, deadline: Deadline, interval: float = 0.1, detail=None):
    """Call `check()` until it returns a truthy value or the deadline passes.

    `check` may raise to fail fast (for example on a kernel panic).  `detail`
    is a callable giving context for the timeout message.
    """
    while True:
        result = check()
        if result:
            return result
        if deadline.expired:
            raise deadline.fail(detail() if detail else "")
        time.sleep(min(interval, max(deadline.remaining, 0.01)))
