"""Whose problem a failure is, decided by the type raised (lab/errors.py) and shown
as Allure categories matched on the type at the start of the message."""
import re

import pytest

from fixtures import reporting
from lab import errors
from lab.access import HypervisorFault
from lab.domain import DomainError
from lab.images import ImageError
from lab.session import LabUnreachable
from lab.timeouts import WaitTimeout


def category_of(message: str, status: str) -> list[str]:
    """As Allure matches (Java's Pattern.matches is a full match)."""
    return [c["name"].split(" (")[0] for c in reporting.categories()
            if status in c["matchedStatuses"] and ("messageRegex" not in c or re.fullmatch(c["messageRegex"], message))]


@pytest.mark.parametrize("message, status, want", [
    ("lab.images.ImageError: the guest image is not usable\nmore", "broken", ["Lab problem"]),
    ("lab.domain.HypervisorFault: acc-1 was paused by the hypervisor", "broken", ["Lab problem"]),
    ("lab.timeouts.WaitTimeout: timed out after 30.0s waiting for x", "broken", ["Timeout"]),
    # the wording of a message decides nothing: an assertion about an unusable lab is a finding
    ("AssertionError: lab host is not usable: cannot connect to libvirt", "failed", ["Product defect"]),
    ("lab.domain.DomainError: libvirt could not start acc-1: is not usable", "failed", ["Product defect"]),
    ("KeyError: 'timed out after'", "broken", ["Harness error"]),
])
def test_categories_follow_the_type(message, status, want):
    assert category_of(message, status) == want


def test_kind_of_each_error():
    assert errors.kind(ImageError("x")) == "lab problem"
    assert errors.kind(LabUnreachable("x")) == "lab problem"
    assert errors.kind(HypervisorFault("x")) == "lab problem"
    assert errors.kind(WaitTimeout("x")) == "timeout"
    assert errors.kind(DomainError("x")) == "product defect"
    assert errors.kind(KeyError("x")) == "harness error"


def test_lab_errors_are_not_assertion_errors():
    """pytest and Allure would report a lab problem as a failed claim otherwise."""
    bad = [t.__name__ for t in reporting._lab_error_types() if issubclass(t, AssertionError)]
    assert bad == []


def test_no_lab_error_is_also_a_runtime_error():
    """A catch of RuntimeError would take lab problems and harness bugs alike."""
    import importlib
    import pkgutil

    import lab
    for m in pkgutil.walk_packages(lab.__path__, "lab."):
        if not m.name.endswith("__main__"):          # a module that runs a command when imported
            importlib.import_module(m.name)
    both = [c.__qualname__ for c in errors.subclasses(errors.LabError) if issubclass(c, RuntimeError)]
    assert not both, f"LabErrors that are also RuntimeErrors: {both}"
