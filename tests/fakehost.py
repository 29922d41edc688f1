"""A recording stand-in for a lab host's `Host`, for self-tests of code that runs host
commands: `handler(argv, input)` answers each command with (rc, stdout[, stderr])."""
from __future__ import annotations

from lab.hostexec import LocalHost, host_result
from lab.result import Result


class FakeHost(LocalHost):
    """Commands go to `handler` and are recorded in `calls`; files are this machine's."""
    local = False

    def __init__(self, handler=None, name: str = "fake", which=True):
        super().__init__(name)
        self.handler = handler or (lambda argv, input: (0, ""))
        self.calls: list[tuple[list[str], str | None]] = []
        self._which = which

    def run(self, *argv, check=True, input=None, timeout=120) -> Result:
        argv = [str(a) for a in argv]
        self.calls.append((argv, input))
        rc, out, *err = self.handler(argv, input)
        res = host_result(self.name, argv, rc, out, err[0] if err else "")
        return res.check() if check else res

    def which(self, prog):
        return self._which(prog) if callable(self._which) else self._which
