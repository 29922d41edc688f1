"""Whose problem a failure is, by the type of what was raised.

- `AssertionError` and the refusals built on it (`DomainError`, `AttachRefused`,
  `GuestPanic`, `CommandFailed`, ...): the product did not do what the guide says.
- `LabError`: the lab could not do its part (a host, an image, libvirt out of reach,
  a device busy or missing, a fault backend, a second libvirt endpoint): no finding
  about the product either way.
- `WaitTimeout` (lab/timeouts.py): a wait ran out.
- anything else: a defect of the harness itself.

The Allure categories are made from these types (fixtures/reporting.py), never from
the wording of a message.
"""
from __future__ import annotations


class LabError(Exception):
    """The lab could not do its part; not a finding about the product."""


def subclasses(cls: type) -> list[type]:
    """`cls` and every class derived from it that is imported so far."""
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c not in out:
            out.append(c)
            todo.extend(c.__subclasses__())
    return out


def kind(exc: BaseException) -> str:
    """"lab problem", "timeout", "product defect" or "harness error"."""
    from .timeouts import WaitTimeout
    if isinstance(exc, LabError):
        return "lab problem"
    if isinstance(exc, WaitTimeout):
        return "timeout"
    if isinstance(exc, AssertionError):
        return "product defect"
    return "harness error"
