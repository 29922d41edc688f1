"""Named steps of the harness's verbs (start, wait, attach, detach, inject a fault),
so a report shows where a failing test stopped.  lab/ stays free of pytest and
Allure: a reporter (fixtures/hooks.py registers `allure.step`) receives them;
without one a step costs nothing."""
from __future__ import annotations

import contextlib
import functools

_REPORTER = None


def set_reporter(reporter) -> None:
    """reporter(title) -> a context manager around the step."""
    global _REPORTER
    _REPORTER = reporter


@contextlib.contextmanager
def step(title: str):
    if _REPORTER is None:
        yield
        return
    with _REPORTER(title):
        yield


def verb(title):
    """Method decorator: `title(self, *args, **kwargs)` names the step."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            with step(title(self, *args, **kwargs)):
                return fn(self, *args, **kwargs)
        return wrapper
    return deco
