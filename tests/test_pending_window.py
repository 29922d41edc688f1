"""A pending window is watched inside the retry_timeout it tests, at any host speed: a
host too slow to fit it is the lab's problem, a job that finishes inside it is the product's."""
import time

import pytest

from lab.retry import TooSlowToWatch, stays_pending


class Job:
    tag = "write"

    def __init__(self, issued_ago=0.0, finishes_after=None):
        self.issued = time.monotonic() - issued_ago
        self.finishes_at = None if finishes_after is None else time.monotonic() + finishes_after
        self.guest = self

    def finished(self):
        return self.finishes_at is not None and time.monotonic() >= self.finishes_at

    def run(self, *a, **k):
        class R:
            stdout = "5"
        return R()

    def output(self):
        return "dd: error writing"


def test_a_job_pending_through_the_window_passes_without_a_scaled_window(monkeypatch):
    monkeypatch.setenv("ACC_TIMEOUT_FACTOR", "5")
    t0 = time.monotonic()
    stays_pending(Job(), 1.0, within=3)
    assert 1.0 <= time.monotonic() - t0 < 2.0, "the window is wall clock, not scaled by the factor"


def test_a_job_that_finishes_inside_the_window_fails_for_the_product():
    with pytest.raises(AssertionError, match="finished during the fault"):
        stays_pending(Job(finishes_after=0.3), 1.5, within=20)


def test_a_window_that_no_longer_fits_in_retry_timeout_is_the_labs_problem():
    # issued 8.5 s ago (a slow start): a 4 s window would end past retry_timeout 10 s - 1 s margin
    with pytest.raises(TooSlowToWatch, match="no longer fits in retry_timeout"):
        stays_pending(Job(issued_ago=8.5), 4, within=10)


def test_a_slow_alive_check_that_runs_past_the_limit_stops_watching():
    slow = lambda: time.sleep(1.7)              # noqa: E731 - a lab host answering slowly
    with pytest.raises(TooSlowToWatch, match="answers too slowly"):
        stays_pending(Job(issued_ago=0.5), 1.4, alive=slow, within=3)
