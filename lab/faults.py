"""Storage fault backends behind one interface.

A backend is a real block storage path that can fail and heal at run time:

- `dm-error`: a device-mapper device over a loop device whose table is
  swapped between `linear` and `error` (dmsetup suspend/load/resume); the VM
  gets it as `<disk type='block'>`.
- `nbdkit`: an NBD export (nbdkit's memory plugin behind its error filter) on a
  unix socket, failing while its error file exists; the VM gets it as an NBD
  network disk.  For hosts without device-mapper.

Used as context managers: on every exit path the fault is healed and the
backend removed.  `describe()` says which backend ran, for the report.
"""
from __future__ import annotations

import datetime
import re
import secrets
import sys
import time
from dataclasses import dataclass

from . import loopdev
from . import xml as X
from .steps import verb
from .timeouts import Deadline, poll
from .errors import LabError

KINDS = ("all", "read", "write")


class FaultError(LabError):
    pass


class FaultBackend:
    name = "?"
    state = "new"                     # new -> healthy <-> failing -> removed
    # hands a file the backend made on the lab host to QEMU's user (libvirt labels only
    # the disks it is given): lab.host.grant_to_qemu bound to the lab host and QEMU's user
    grant = None

    def setup(self) -> "FaultBackend":
        raise NotImplementedError

    def disk(self, target: str, bus: str = "virtio", **driver) -> "X.etree._Element":
        raise NotImplementedError

    def fail(self, kind: str = "all") -> None:
        raise NotImplementedError

    def heal(self) -> None:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def qemu_file(self) -> str:
        """The storage as QEMU's own `-drive file=` names it (for QEMU's command-line form)."""
        raise NotImplementedError

    def requests(self) -> list | None:
        """The requests the storage saw, with their outcome (None: this backend keeps no record)."""
        return None

    def devices_beside_qemu_file(self) -> list:
        """What the domain must also list for a QEMU started with qemu_file() on its own
        command line to open it: nothing for a socket or file."""
        return []

    def helper_log(self) -> str:
        """The backend's own helper process output, for the evidence ("" when it has none)."""
        return ""

    def failing_now(self) -> str:
        """The storage's own word that it is failing now (raises FaultError if not)."""
        raise NotImplementedError

    def healthy(self) -> bool:
        return self.state == "healthy"

    def _check_kind(self, kind):
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r}: use one of {KINDS}")

    def __enter__(self):
        return self.setup()

    def __exit__(self, *exc):
        try:
            if self.state == "failing":
                self.heal()
        finally:
            self.remove()


# ------------------------------------------------------------------ nbdkit

@dataclass(frozen=True)
class NbdRequest:
    """One request the NBD export saw (nbdkit's log filter, outside the error filter)."""
    at: float                 # seconds since the epoch, when the request arrived
    op: str                   # Read, Write, Flush, Trim, Zero, ...
    offset: int
    count: int
    error: str | None         # None: succeeded; 'EIO': failed; '?' : no reply logged yet

    @property
    def failed(self) -> bool:
        return self.error not in (None, "?")


_LOG_CALL = re.compile(r"^(\S+ \S+) connection=(\d+) (\w+) id=(\d+)(.*)$")
_LOG_RETURN = re.compile(r"^\S+ \S+ connection=(\d+) \.\.\.(\w+) id=(\d+) return=(-?\d+)(?: error=(\w+))?")


def parse_nbd_log(text: str) -> list[NbdRequest]:
    """nbdkit log-filter lines -> the requests in arrival order, each with its outcome."""
    calls: dict = {}
    order = []
    outcome: dict = {}
    for line in text.splitlines():
        m = _LOG_RETURN.match(line)
        if m:
            conn, op, rid, rc, err = m.groups()
            outcome[(conn, rid)] = None if rc == "0" else (err or f"rc {rc}")
            continue
        m = _LOG_CALL.match(line)
        if m and m.group(3) not in ("Connect", "Disconnect"):
            stamp, conn, op, rid, rest = m.groups()
            args = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
            t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
            calls[(conn, rid)] = (t, op, int(args.get("offset", "0"), 16), int(args.get("count", "0"), 16))
            order.append((conn, rid))
    return [NbdRequest(*calls[k], outcome.get(k, "?")) for k in order]


class NbdkitVanished(FaultError):
    """nbdkit exited before it answered its first handshake."""


class NbdkitBackend(FaultBackend):
    name = "nbdkit"

    def __init__(self, host, workdir, size_mib: int = 64, write_delay_ms: int = 0):
        """nbdkit on the lab host `host`, its socket and files in `workdir` there.
        `write_delay_ms`: every write takes that long before it succeeds or fails (a slow
        storage path: nbdkit's delay filter, between the log and the error filter)."""
        self.host = host
        self.dir = workdir
        self.size_mib = size_mib
        self.write_delay_ms = write_delay_ms
        self.socket = workdir / f"nbd-{secrets.token_hex(3)}.sock"
        self.files = {k: workdir / f"fault-{k}-{secrets.token_hex(3)}" for k in ("read", "write")}
        self.pid: int | None = None
        self.log = workdir / f"{self.socket.stem}.log"
        self.pidfile = workdir / f"{self.socket.stem}.pid"     # nbdkit writes it once it serves
        self.requests_log = workdir / f"{self.socket.stem}.requests.log"

    def command(self) -> list[str]:
        # The log filter sits outside the error filter: it sees each request as QEMU sent
        # it and the error it got back, with the time it arrived.
        delay = (["--filter=delay"], [f"delay-write={self.write_delay_ms}ms"]) if self.write_delay_ms else ([], [])
        return ["nbdkit", "--foreground", "--unix", str(self.socket), "--pidfile", str(self.pidfile),
                "--filter=log", *delay[0], "--filter=error", "memory", f"{self.size_mib}M",
                f"logfile={self.requests_log}", *delay[1],
                "error-pread=EIO", "error-pread-rate=100%", f"error-pread-file={self.files['read']}",
                "error-pwrite=EIO", "error-pwrite-rate=100%", f"error-pwrite-file={self.files['write']}",
                "error-trim=EIO", "error-trim-rate=100%", f"error-trim-file={self.files['write']}",
                "error-zero=EIO", "error-zero-rate=100%", f"error-zero-file={self.files['write']}"]

    # Starts nbdkit detached on the lab host (its output in $1), prints its pid.
    _START = 'log=$1; shift; mkdir -p "${log%/*}"; cd / && setsid "$@" </dev/null >"$log" 2>&1 & echo $!'
    # Stops pid $1 if it is the nbdkit serving socket $2 (never a recycled pid); just started,
    # it may not have exec'd nbdkit yet: up to 2 s for that.
    _STOP = r'''
i=0
while [ -d "/proc/$1" ] && ! grep -qF "$2" "/proc/$1/cmdline" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
grep -qF "$2" "/proc/$1/cmdline" 2>/dev/null || exit 0
kill "$1"; i=0
while [ -d "/proc/$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
[ -d "/proc/$1" ] && kill -9 "$1"
exit 0
'''


    def setup(self) -> "NbdkitBackend":
        if not self.host.which("nbdkit"):
            raise FaultError(f"nbdkit is not installed on lab host {self.host.name} (Debian package nbdkit)")
        # nbdkit on the namespace lab host has been seen to vanish without a word right after it
        # started (about 1 start in 10 under load: no log, pid file and socket left, no process);
        # a helper that died before it served is started again, twice at most, and said so.
        starts = 3
        for n in range(1, starts + 1):
            try:
                return self._start_once()
            except NbdkitVanished as e:
                vanished = e
                if n < starts:
                    print(f"[lab] {e}; starting it again", file=sys.stderr, flush=True)
        raise FaultError(f"{vanished} ({starts} starts)")

    def _start_once(self) -> "NbdkitBackend":
        r = self.host.run("sh", "-c", self._START, "sh", str(self.log), *self.command(), check=False)
        if not r.ok or not r.stdout.strip().isdigit():
            raise FaultError(f"nbdkit did not start on {self.host.name}: {r.stderr.strip()}")
        started = int(r.stdout.strip())      # nbdkit itself: setsid exec's it

        def up():
            # Ready when it answers: an NBD handshake over its socket on the lab host (a pid
            # file and a socket file say only that it started).
            if self.host.exists(self.pidfile) and self.host.exists(self.socket) and self.answers():
                return True
            if not self.host.exists(f"/proc/{started}"):
                raise NbdkitVanished(f"nbdkit (pid {started}) exited on {self.host.name} before it served "
                                     f"{self.socket}: {self.helper_log()[-500:]}")
            return False

        try:
            poll(up, Deadline(30, f"nbdkit to answer an NBD handshake on {self.socket} on {self.host.name}"),
                 interval=0.1, detail=lambda: "nbdkit's own log: " + self._log_tail())
            self.pid = int(self.host.read_text(self.pidfile).strip())
        except BaseException:
            self.pid = started           # never served: stopped all the same (setsid exec'd it as `started`)
            self.remove()
            raise
        if self.grant:                       # QEMU runs as another user: the socket becomes its own
            self.grant(str(self.socket))
        self.state = "healthy"
        return self

    def _handshake(self):
        """An NBD handshake with nbdkit on its socket (qemu-img on the lab host connects as
        QEMU will, reads nothing)."""
        return self.host.run("qemu-img", "info", "--image-opts",
                             f"driver=nbd,server.type=unix,server.path={self.socket}", check=False, timeout=20)

    def answers(self) -> bool:
        return self._handshake().ok

    def _log_tail(self) -> str:
        """The end of nbdkit's log, what of it exists on the lab host, and the last handshake's
        answer, for a wait that ran out."""
        try:
            last = self._handshake()
            text = self.host.read_text(self.log) if self.host.exists(self.log) else "(no log)"
            ps = self.host.run("sh", "-c", "ps -o pid,stat,etime,args -C nbdkit 2>&1 | head -20", check=False)
            return (f"{text[-600:] or '(empty)'} | pid file {'present' if self.host.exists(self.pidfile) else 'absent'},"
                    f" socket {'present' if self.host.exists(self.socket) else 'absent'} | nbdkit processes: "
                    f"{ps.stdout.strip()[-600:]} | last handshake: rc {last.rc}: stdout {last.stdout[-300:]!r} "
                    f"stderr {last.stderr[-300:]!r}")
        except Exception as e:          # noqa: BLE001 - evidence only; the timeout is the error
            return f"(could not read it: {type(e).__name__}: {e})"

    def helper_log(self) -> str:
        """nbdkit's own output on the lab host, and whether it still runs (evidence)."""
        alive = self.pid is not None and self.host.exists(f"/proc/{self.pid}")
        text = self.host.read_text(self.log) if self.host.exists(self.log) else "(no log)"
        return f"nbdkit pid {self.pid} {'running' if alive else 'not running'}\n{text}"

    def disk(self, target, bus="virtio", **driver):
        return X.disk(str(self.socket), target=target, bus=bus, fmt="raw", kind="network", **driver)

    @verb(lambda self, kind="all": f"inject {kind} I/O errors ({self.name})")
    def fail(self, kind: str = "all") -> None:
        self._check_kind(kind)
        for k in (("read", "write") if kind == "all" else (kind,)):
            self.host.run("touch", str(self.files[k]))
        self.state = "failing"

    @verb(lambda self: f"heal the storage fault ({self.name})")
    def heal(self) -> None:
        self.host.run("rm", "-f", *(str(f) for f in self.files.values()))
        self.state = "healthy"

    def remove(self) -> None:
        self.heal()
        if self.pid is not None:
            self.host.run("sh", "-c", self._STOP, "sh", str(self.pid), str(self.socket), check=False)
        # and any nbdkit on this socket the pid did not name (its path is this backend's alone)
        self.host.run("pkill", "-9", "-f", "--", f"--unix {self.socket} ", check=False)
        self.host.run("rm", "-f", str(self.socket), str(self.requests_log), str(self.pidfile), check=False)
        self.state = "removed"

    def requests(self) -> list[NbdRequest]:
        """Every request the export has seen so far (the backend's own record)."""
        try:
            return parse_nbd_log(self.host.read_text(self.requests_log))
        except FileNotFoundError:
            return []

    def qemu_file(self) -> str:
        return f"nbd:unix:{self.socket}"

    def failing_now(self) -> str:
        armed = [k for k, f in self.files.items() if self.host.exists(f)]
        failed = [r for r in self.requests() if r.failed]
        if not armed or not failed:
            raise FaultError(f"nbdkit is not failing: error files armed {armed or 'none'}, "
                             f"{len(failed)} failed request(s) in its log")
        return f"nbdkit fails {'/'.join(armed)}: {len(failed)} request(s) failed so far, the last {failed[-1]}"

    def describe(self) -> str:
        return (f"nbdkit memory {self.size_mib}M behind the error filter (EIO while the error file exists) "
                f"on {self.socket.name}, every request logged by the log filter"
                + (f", writes delayed {self.write_delay_ms} ms" if self.write_delay_ms else "")
                + "; fallback for a host without device-mapper")


# ------------------------------------------------------------------ dm-error

def dm_tables(sectors: int, device: str, errdev: str = "", write_delay_ms: int = 0) -> dict[str, str]:
    """The device's tables for each state: 'linear' (healthy), 'all' (reads and writes
    fail), and with `errdev` (a device whose whole table is `error`) 'read' and 'write',
    one direction failing through dm-delay, which sends reads and writes to different
    devices; `write_delay_ms` makes every write (failing or not) that much slower."""
    if sectors <= 0:
        raise ValueError(f"device {device} has {sectors} sectors")
    if not errdev:
        if write_delay_ms:
            raise ValueError("a write delay needs the error device (dm-delay)")
        return {"linear": f"0 {sectors} linear {device} 0", "all": f"0 {sectors} error"}

    def delay(reads: str, writes: str) -> str:
        return f"0 {sectors} delay {reads} 0 0 {writes} 0 {write_delay_ms}"
    return {"linear": delay(device, device) if write_delay_ms else f"0 {sectors} linear {device} 0",
            "all": delay(errdev, errdev) if write_delay_ms else f"0 {sectors} error",
            "read": delay(errdev, device), "write": delay(device, errdev)}


DM_DELAY_FIX = ("the lab host's kernel needs device-mapper's delay target (dm-delay) for slow writes and "
                "one-direction faults: load it (modprobe dm-delay) or use [faults] backend nbdkit")


class DmErrorBackend(FaultBackend):
    """A device-mapper device over a loop device, its table swapped between linear and
    error; with a write delay, a second device of the run's, all `error`, lets dm-delay
    slow every write and fail reads or writes alone."""
    name = "dm-error"

    def __init__(self, host, workdir, run_id: str, size_mib: int = 64, write_delay_ms: int = 0):
        """On the lab host `host`, the backing file in `workdir` there."""
        self.host = host
        self.dir = workdir
        self.size_mib = size_mib
        self.dm_name = f"acc-{run_id}-{secrets.token_hex(3)}"
        self.err_name = f"{self.dm_name}-err" if write_delay_ms else ""
        self.write_delay_ms = write_delay_ms
        self.backing = workdir / f"{self.dm_name}.img"
        self.loop: str | None = None
        self.tables: dict[str, str] = {}

    def _dmsetup(self, *args, stdin=None):
        r = self.host.run("dmsetup", *args, input=stdin, check=False)
        if not r.ok:
            raise FaultError(f"dmsetup {' '.join(args)} failed on {self.host.name}: {r.stderr.strip()}")
        return r

    def setup(self) -> "DmErrorBackend":
        r = self.host.run("sh", "-c", 'mkdir -p "$1" && truncate -s "$2" "$3"', "sh", str(self.dir),
                          f"{self.size_mib}M", str(self.backing), check=False)
        if not r.ok:
            raise FaultError(f"cannot make the backing file {self.backing}: {r.stderr.strip()}")
        try:
            self.loop = loopdev.attach(self.host, self.backing)
            sectors = int(self.host.run("blockdev", "--getsz", self.loop, check=False).stdout.strip() or 0)
            errdev = ""
            if self.err_name:
                self._dmsetup("create", self.err_name, stdin=f"0 {sectors} error\n")
                errdev = f"/dev/mapper/{self.err_name}"
            self.tables = dm_tables(sectors, self.loop, errdev, self.write_delay_ms)
            try:
                self._dmsetup("create", self.dm_name, stdin=self.tables["linear"] + "\n")
            except FaultError as e:
                if self.err_name:
                    raise FaultError(f"{e}; {DM_DELAY_FIX}") from None
                raise
        except BaseException:
            self.remove()
            raise
        self.state = "healthy"
        return self

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.dm_name}"

    def disk(self, target, bus="virtio", **driver):
        return X.disk(self.path, target=target, bus=bus, fmt="raw", kind="block", **driver)

    def _swap(self, table: str) -> None:
        self._dmsetup("suspend", "--noflush", self.dm_name)
        try:
            self._dmsetup("load", self.dm_name, stdin=table + "\n")
        finally:
            self._dmsetup("resume", self.dm_name)

    @verb(lambda self, kind="all": f"inject {kind} I/O errors ({self.name})")
    def fail(self, kind: str = "all") -> None:
        self._check_kind(kind)
        if kind not in self.tables:
            raise FaultError("this dm-error device fails reads and writes together; one direction needs the "
                             "backend made with a write delay (dm-delay onto its all-error device)")
        self._swap(self.tables[kind])
        self.state = "failing"

    @verb(lambda self: f"heal the storage fault ({self.name})")
    def heal(self) -> None:
        self._swap(self.tables["linear"])
        self.state = "healthy"

    def remove(self) -> None:
        for name in (self.dm_name, self.err_name):     # the device first: it maps onto the error device
            if not name:
                continue
            for _ in range(20):          # the VM may still hold it for a moment
                r = self.host.run("dmsetup", "remove", name, check=False)
                if r.ok or "No such device" in r.stderr or "not found" in r.stderr.lower():
                    break
                time.sleep(0.1)
        if self.loop:
            loopdev.detach(self.host, self.loop)
        self.host.run("rm", "-f", str(self.backing), str(self.dir / f"{self.dm_name}.node"), check=False)
        self.state = "removed"

    def describe(self) -> str:
        more = ""
        if self.err_name:
            more = (f"; writes delayed {self.write_delay_ms} ms and one direction failing through dm-delay onto "
                    f"{self.err_name} (all error)")
        return f"device-mapper {self.dm_name}: linear over {self.loop} swapped with an error table{more}"

    def devices_beside_qemu_file(self) -> list:
        """libvirt lets QEMU open only the block devices of the domain's XML (its device
        cgroup, and the private /dev it makes for QEMU): the dm device is listed as a disk
        of its own (serial acc-node, never used by the guest), which grants QEMU read and
        write on it."""
        return [X.disk(self.path, target="vdz", bus="virtio", fmt="raw", kind="block", cache="none",
                       serial="acc-node")]

    def qemu_file(self) -> str:
        """A node of the dm device in the backend's directory on the lab host: outside /dev
        (private to QEMU under libvirt, so a -drive of /dev/mapper finds nothing), and a
        file of its own, so QEMU's image lock on it does not collide with the disk of
        devices_beside_qemu_file() on /dev/mapper (locks go by file)."""
        node = self.dir / f"{self.dm_name}.node"
        if not self.host.exists(node):
            major, minor = self._dmsetup("info", "-c", "--noheadings", "-o", "major,minor",
                                         self.dm_name).stdout.strip().split(":")
            self.host.run("mknod", str(node), "b", major, minor)
        # QEMU started from its own command line gets no ownership or label from libvirt:
        # the node (the harness's own, removed with the backend) is handed to QEMU's user.
        if self.grant:
            self.grant(str(node))
        return str(node)

    def failing_now(self) -> str:
        table = self._dmsetup("table", self.dm_name).stdout.strip()
        f = table.split()
        # a delay table names its devices by major:minor; failing when one is the error device
        failing = f[2:3] == ["error"] or (f[2:3] == ["delay"] and self._err_majmin() in f[3:4] + f[6:7])
        if not failing:
            raise FaultError(f"device-mapper {self.dm_name} is not failing: its live table is {table!r}")
        return f"device-mapper {self.dm_name} live table: {table}"

    def _err_majmin(self) -> str:
        if not self.err_name:
            return "-"
        r = self.host.run("dmsetup", "info", "-c", "--noheadings", "-o", "major,minor", self.err_name, check=False)
        return r.stdout.strip().replace(" ", "") if r.ok else "?"


def make_backend(name: str, host, workdir, run_id: str, write_delay_ms: int = 0, grant=None) -> FaultBackend:
    """The backend on the lab host `host`; `workdir` is a path there; `grant(path)` hands
    a file it makes to QEMU's user."""
    if name == "nbdkit":
        b = NbdkitBackend(host, workdir, write_delay_ms=write_delay_ms)
    elif name == "dm-error":
        b = DmErrorBackend(host, workdir, run_id, write_delay_ms=write_delay_ms)
    else:
        b = None
    if b is not None:
        b.grant = grant
        return b
    raise FaultError(f"no fault backend on this lab host (faults.backend = {name!r}); "
                     "install nbdkit or use a host with device-mapper")
