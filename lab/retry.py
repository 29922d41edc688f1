"""Disk I/O suspension (openEuler's `retry` error policy) as the suites use it.

A lab host expresses the guide's settings in one of two forms (host.retry_form):
- 'xml': the guide's libvirt XML (error_policy/rerror_policy='retry',
  retry_interval, retry_timeout on the disk's <driver>), where libvirt has
  openEuler's extension;
- 'override': the same settings as QEMU device properties (werror, rerror,
  retry_interval, retry_timeout) through libvirt's <qemu:override>, where QEMU
  has the feature and libvirt does not (upstream libvirt on openEuler's QEMU).
Either way the disk carries a user alias, so QEMU's device is
/machine/peripheral/<alias> and the settings are read back from QEMU itself.

Also: a guest command run in the background with its own start and end times
(the guest's /proc/uptime), and the gaps between the attempts a backend saw.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

from .errors import LabError

from .timeouts import Deadline, poll

SETTINGS = ("werror", "rerror", "retry_interval", "retry_timeout")


@dataclass(frozen=True)
class RetryPolicy:
    """The guide's settings; None leaves a setting out (QEMU's default then applies)."""
    werror: str | None = "retry"
    rerror: str | None = "retry"
    interval: int | None = None       # ms
    timeout: int | None = None        # ms

    def qemu_properties(self) -> dict:
        props = {"werror": self.werror, "rerror": self.rerror,
                 "retry_interval": self.interval, "retry_timeout": self.timeout}
        return {k: v for k, v in props.items() if v is not None}


def retry_disk(fault, form: str, target: str, policy: RetryPolicy, serial: str, bus: str = "virtio"):
    """(the disk element on the fault backend, the domain's <qemu:override> entries)."""
    if form not in ("xml", "override"):
        raise ValueError(f"retry form {form!r}: this lab host has no disk I/O suspension")
    alias = f"ua-{serial}"
    if form == "xml":
        d = fault.disk(target, bus=bus, error_policy=policy.werror, rerror_policy=policy.rerror, cache="none",
                       serial=serial, alias=alias)
        drv = d.find("driver")
        if policy.interval is not None:
            drv.set("retry_interval", str(policy.interval))
        if policy.timeout is not None:
            drv.set("retry_timeout", str(policy.timeout))
        return d, {}
    d = fault.disk(target, bus=bus, cache="none", serial=serial, alias=alias)
    return d, {alias: policy.qemu_properties()}


def device_settings(vm, serial: str) -> dict:
    """The four settings as QEMU's device holds them (qom-get), whatever form set them."""
    path = f"/machine/peripheral/ua-{serial}"
    return {p: vm.qemu.qmp("qom-get", path=path, property=p) for p in SETTINGS}


class GuestJob:
    """`command` started in the guest, detached, with the guest's uptime before and after
    it and its exit code in /tmp/<tag>.{t0,t1,rc}.  The SSH exchange that starts it runs in
    a thread: the command's own I/O may suspend the VM before that exchange is over (a
    suspended guest cannot answer), and no fixed sleep covers that on a slow lab host.
    Wait for what the command causes (the suspend event, a pending I/O), then `rc()`."""

    def __init__(self, guest, command: str, tag: str):
        self.guest, self.tag, self._error = guest, tag, None
        self.issued = time.monotonic()      # no later than the guest starts the command
        t = "cut -d' ' -f1 /proc/uptime >"
        script = f"{t} /tmp/{tag}.t0; {command} > /tmp/{tag}.log 2>&1; r=$?; {t} /tmp/{tag}.t1; echo $r > /tmp/{tag}.rc"

        def start():
            try:
                guest.run("rm -f /tmp/%s.rc /tmp/%s.t0 /tmp/%s.t1; setsid sh -c %s > /dev/null 2>&1 < /dev/null &",
                          tag, tag, tag, script, timeout=600, check=True)
            except BaseException as e:      # handed to rc() in the test's thread
                self._error = e
        self._thread = threading.Thread(target=start, name=f"guest-{tag}", daemon=True)
        self._thread.start()

    def started(self, seconds: float = 60) -> "GuestJob":
        """Wait until the command has begun (the SSH exchange that starts it is over and its
        start time is written).  Only for a command that does not stop the VM."""
        d = Deadline(seconds, f"the guest's {self.tag} to start")
        self._thread.join(max(d.remaining, 0.1))
        if self._thread.is_alive():
            raise d.fail("the SSH command that starts it did not return")
        poll(lambda: self._raise() or self.guest.run("test -s /tmp/%s.t0", self.tag, check=False).ok, d, interval=0.2)
        return self

    def _raise(self):
        if self._error is not None:
            raise self._error

    def finished(self) -> bool:
        """The command has ended.  No second SSH channel is opened while the one that starts
        it is still open: two at once on the guest's dropbear once failed with 'Channel closed'."""
        self._raise()
        if self._thread.is_alive():
            return False
        return self.guest.run("cat /tmp/%s.rc", self.tag, check=False).ok

    def rc(self, seconds: float = 60) -> int:
        d = Deadline(seconds, f"the guest's {self.tag} to finish")
        self._thread.join(max(d.remaining, 0.1))
        if self._thread.is_alive():
            raise d.fail("the SSH command that starts it did not return")
        self._raise()
        return int(poll(lambda: self.guest.run("cat /tmp/%s.rc", self.tag, check=False).stdout.strip(), d, interval=0.3))

    def outcome(self, seconds: float) -> int | None:
        """The exit code, or None if the command is still running after `seconds` (scaled)."""
        d = Deadline(seconds, f"the guest's {self.tag} to finish")
        while not d.expired:
            if self.finished():
                return self.rc(seconds=max(d.remaining, 5))
            time.sleep(0.3)     # a poll's interval: no guest command while the starting one may be open
        return None

    def elapsed(self) -> float:
        """Seconds the command took, by the guest's clock (after rc())."""
        t0, t1 = (float(self.guest.check_output("cat /tmp/%s.%s", self.tag, k)) for k in ("t0", "t1"))
        return t1 - t0

    def output(self) -> str:
        return self.guest.run("cat /tmp/%s.log", self.tag, check=False).stdout


class TooSlowToWatch(LabError):
    """The lab host answered too slowly to watch a pending window inside the retry_timeout
    it tests: no verdict about the product either way."""


def stays_pending(job: GuestJob, seconds: float, alive=None, within: float | None = None) -> None:
    """For `seconds` (wall clock, not scaled: a minimum, which a slow host does not make
    less true) the job neither completes nor fails; `alive()` may raise (for example
    when the VM stopped).  `within`: the retry_timeout under test.  Every observation is
    made before it runs out, counted from when the job was issued, with a margin of a
    second: after it, a finished job would be right, so a window that cannot end in time
    is the lab's problem (TooSlowToWatch), never a pass or a product failure."""
    t0 = time.monotonic()
    limit = job.issued + within - 1.0 if within is not None else float("inf")
    if t0 + seconds > limit:
        raise TooSlowToWatch(f"the guest's {job.tag} started {t0 - job.issued:.1f} s after it was issued: a "
                             f"{seconds} s pending window no longer fits in retry_timeout ({within} s)")
    while (now := time.monotonic()) < t0 + seconds:
        if job.finished():
            raise AssertionError(f"the guest's {job.tag} finished during the fault (rc "
                                 f"{job.guest.run('cat /tmp/%s.rc', job.tag, check=False).stdout.strip()}) after "
                                 f"{now - t0:.1f} s of a {seconds} s window: {job.output()[-300:]!r}")
        if alive:
            alive()
        if time.monotonic() > limit:
            raise TooSlowToWatch(f"watching the guest's {job.tag} took until {time.monotonic() - job.issued:.1f} s "
                                 f"after it was issued, past what retry_timeout ({within} s) leaves for a "
                                 f"{seconds} s window (the lab host answers too slowly)")
        time.sleep(0.5)
    if time.monotonic() < limit and job.finished():      # a last look, still inside retry_timeout
        raise AssertionError(f"the guest's {job.tag} finished during the fault (at the end of a {seconds} s window): "
                             f"{job.output()[-300:]!r}")


@dataclass(frozen=True)
class Attempts:
    """The failed attempts of one kind a backend saw, and the gaps between them."""
    times: tuple

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]

    @property
    def per_second(self) -> float:
        span = self.times[-1] - self.times[0] if self.count > 1 else 0
        return (self.count - 1) / span if span else 0.0

    def summary(self) -> str:
        g = self.gaps
        if not g:
            return f"{self.count} failed attempt(s)"
        return (f"{self.count} failed attempts, {self.per_second:.2f}/s; gap min {min(g) * 1000:.0f} ms, "
                f"median {statistics.median(g) * 1000:.0f} ms, max {max(g) * 1000:.0f} ms")


class AttemptSource:
    """Where the failed attempts are counted: the storage's own log where the fault
    backend keeps one (nbdkit's log filter: an independent witness), else QEMU's
    BLOCK_IO_ERROR events (one per failed attempt: action 'retry' for each it will try
    again, then the one it hands over; `log` is the domain's open IoErrorLog)."""

    def __init__(self, fault, log):
        self.fault, self.log = fault, log
        self.storage = fault.requests() is not None
        self.name = (f"the storage's request log ({fault.name})" if self.storage else
                     f"QEMU's BLOCK_IO_ERROR events ({fault.name} keeps no request log)")

    def __call__(self) -> list:
        return self.fault.requests() if self.storage else self.log.events()


def failed_attempts(requests, op: str | None = None, since: float = 0.0) -> Attempts:
    """The failed attempts (of one kind of request, or of any) since a time."""
    return Attempts(tuple(r.at for r in requests if (op is None or r.op == op) and r.failed and r.at >= since))


def most_retried(requests, since: float = 0.0) -> Attempts:
    """The failed attempts (since a time) of the one request (kind, offset, length) tried
    most often: many requests failing once each is no retry."""
    by: dict = {}
    for r in requests:
        if r.failed and r.at > since:
            by.setdefault((r.op, r.offset, r.count), []).append(r.at)
    return Attempts(tuple(max(by.values(), key=len, default=[])))


class QemuStartError(AssertionError):
    """QEMU refused a command line (the guide's, in IOS-7) or did not answer: a finding
    about the product, in QEMU's own words."""


def qemu_oneshot(host, emulator: str, arch, args, commands: list[dict], timeout: float = 60) -> list[dict]:
    """QEMU started on the lab host with `args`, held before the guest runs (-S), asked
    `commands` over QMP on its standard input, then told to quit.  One host command,
    so it is the same on this machine and on a lab host over SSH (no monitor socket
    has to reach the controller).  Returns the replies in order."""
    import json
    script = [{"execute": "qmp_capabilities", "id": "caps"}]
    script += [dict(c, id=i) for i, c in enumerate(commands)]
    script.append({"execute": "quit", "id": "quit"})
    r = host.run(emulator, "-M", arch.machine, "-nodefaults", "-display", "none", "-S", "-qmp", "stdio", *args,
                 input="".join(json.dumps(c) + "\n" for c in script), check=False, timeout=timeout)
    replies = {}
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and "id" in msg:
            replies[msg["id"]] = msg
    if "caps" not in replies:
        raise QemuStartError(f"{emulator} on lab host {host.name} refused the command line (exit {r.rc}): "
                             f"{(r.stderr.strip() or r.stdout.strip())[-600:]}")
    return [replies.get(i, {"error": {"desc": "no reply"}}) for i in range(len(commands))]
