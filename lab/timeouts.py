"""One deadline type for every wait in the harness.

A `Deadline` is monotonic and is passed down from the caller, so nested waits
share one budget (labgrid's Timeout idea).  Every budget is scaled by the timeout
factor of the lab host the work is for: a run paces what it does with its own
(`paced(factor)`, a context variable), so two lab hosts in one process (a fleet run
without xdist) each keep theirs.  `set_factor` sets the default for a process that
works on one lab host (the CLI's commands).
"""
from __future__ import annotations

import contextlib
import contextvars
import time

_DEFAULT = 1.0
_PACE: contextvars.ContextVar[float | None] = contextvars.ContextVar("acc_timeout_factor", default=None)


def _checked(factor: float) -> float:
    if factor <= 0:
        raise ValueError(f"timeout factor must be > 0, got {factor}")
    return float(factor)


def set_factor(factor: float) -> None:
    """The default factor of this process (a CLI command on one lab host)."""
    global _DEFAULT
    _DEFAULT = _checked(factor)


@contextlib.contextmanager
def paced(factor: float):
    """Deadlines made inside scale by `factor` (the lab host's), whatever the default."""
    token = _PACE.set(_checked(factor))
    try:
        yield
    finally:
        _PACE.reset(token)


def factor() -> float:
    v = _PACE.get()
    return _DEFAULT if v is None else v


class WaitTimeout(TimeoutError):
    """A wait ran out of time; the message says what was waited for."""


class Deadline:
    def __init__(self, seconds: float, what: str = "operation", scaled: bool = True):
        self.factor = factor()           # the pace it was made at: its sub-deadlines keep it
        self.budget = seconds * (self.factor if scaled else 1.0)
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
        d.factor = self.factor
        d.budget = min(seconds * self.factor, self.remaining)
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
