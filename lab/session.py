"""The libvirt session: one connection with its event loop registered before
open(), keepalive, a close callback, and an event hub that hands out waiters
registered *before* the action they wait for (nova's pattern)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import libvirt

from .timeouts import Deadline
from .errors import LabError

_loop_lock = threading.Lock()
_loop_started = False


def _ensure_event_loop() -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class LabUnreachable(LabError):
    pass


LIFECYCLE_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


class LibvirtdStoppedAnswering(AssertionError):
    """libvirt's daemon runs and does not answer (its keepalive ran out, and a new
    connection got no answer): a finding about the product under test (a QEMU that floods
    it with events, a deadlock), with the daemon's and the run's QEMU processes' state."""


class LibvirtFacts:
    """What libvirt says about the lab host, asked once: its capabilities, who QEMU runs as,
    and the O_DIRECT flag of the host kernel's architecture."""

    def __init__(self, session, virt_type: str):
        self._session, self._virt_type = session, virt_type
        self._caps = self._user = None

    def capabilities(self) -> str:
        if self._caps is None:
            self._caps = self._session.conn.getCapabilities()
        return self._caps

    def qemu_user(self):
        """Who QEMU runs as on the lab host (hostfacts.QemuUser)."""
        from .hostfacts import qemu_user
        if self._user is None:
            self._user = qemu_user(self.capabilities(), self._virt_type)
        return self._user

    def o_direct(self) -> int:
        """The O_DIRECT flag of the lab host's kernel, whatever the guests' architecture."""
        from .arch import o_direct
        from .hostfacts import host_arch
        return o_direct(host_arch(self.capabilities()))


class UnansweredJudge:
    """What to raise when libvirt's daemon stopped answering during a run, judged by its
    processes on the lab host: one that runs (busy or waiting) and does not answer is a
    finding about the product (a QEMU flooding it with events, a deadlock); one that is
    stopped (SIGSTOP, a debugger) or gone is the lab's problem.  Either way the message
    has the daemon's and the run's QEMU processes' state and CPU use."""

    def __init__(self, host, pid_files, qemu_prefix: str):
        """`pid_files`: the daemon's pid files on the lab host; `qemu_prefix`: the run's
        domain names start with it."""
        self.host, self.pid_files, self.qemu_prefix = host, pid_files, qemu_prefix

    def __call__(self, message: str) -> Exception:
        from .hostproc import daemon_and_qemu_states
        try:
            states = daemon_and_qemu_states(self.host, self.qemu_prefix)
        except (LabError, OSError) as e:    # the host itself may not answer: then it is the lab's
            return LabUnreachable(f"{message}; the lab host {self.host.name} could not be asked about its "
                                  f"processes either: {e}")
        return judge_unanswered(states, self._daemon_pids(), self.host.name, message)

    def _daemon_pids(self) -> set[int]:
        pids = set()
        for f in self.pid_files:
            try:
                pids.add(int(self.host.read_text(str(f)).strip()))
            except (OSError, ValueError):
                continue
        return pids


def judge_unanswered(states, serving: set[int], host: str, message: str) -> Exception:
    """Whose problem a daemon that stopped answering is, by its processes (hostproc.ProcState):
    one that runs (busy, sleeping or waiting on I/O) and answers nobody is a finding about the
    product; one that is stopped (SIGSTOP, a debugger) or gone is the lab's.  `serving`: the
    pids the daemon's pid files name (judged alone when among the daemons found)."""
    daemons = [s for s in states if not s.what.startswith("QEMU")]
    if {s.pid for s in daemons} & serving:
        daemons = [s for s in daemons if s.pid in serving]
    seen = "; ".join(s.describe() for s in states) or "no libvirtd or virtqemud process"
    if any(s.state in ("R", "S", "D") for s in daemons):
        return LibvirtdStoppedAnswering(f"libvirt's daemon on {host} stopped answering during the test (a "
                                        f"product finding: it runs but answers nobody): {message}. Processes: {seen}")
    return LabUnreachable(f"{message}. libvirt's daemon on {host} is stopped or gone, which is not the product's "
                          f"doing: {seen}")


@dataclass
class Event:
    kind: str            # lifecycle | device-removed | device-removal-failed | device-added | io-error
    domain: str          # domain UUID
    detail: dict = field(default_factory=dict)


class Waiter:
    """Collects matching events from the moment it is created."""

    def __init__(self, hub: "EventHub", uuid: str, kinds: set[str], match):
        self.hub, self.uuid, self.kinds, self.match = hub, uuid, kinds, match
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def _offer(self, ev: Event) -> None:
        if ev.domain == self.uuid and ev.kind in self.kinds and self.match(ev):
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()

    def wait(self, deadline: Deadline) -> Event:
        with self._cond:
            if not self._cond.wait_for(lambda: self.events, timeout=deadline.remaining):
                raise deadline.fail(f"no {'/'.join(sorted(self.kinds))} event")
            return self.events[0]

    def close(self) -> None:
        self.hub._remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EventHub:
    """Waiters outlive the connection: after a reconnect the hub registers its
    callbacks on the new connection and keeps every waiter."""

    def __init__(self, conn: libvirt.virConnect):
        self._waiters: list[Waiter] = []
        self._lock = threading.Lock()
        self.bind(conn)

    def bind(self, conn: libvirt.virConnect) -> None:
        reg = conn.domainEventRegisterAny
        self._ids = [
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._removed, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, self._removal_failed, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._added, None),
            reg(None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._io_error, None),
        ]

    def waiter(self, dom: libvirt.virDomain, kinds, match=lambda ev: True) -> Waiter:
        w = Waiter(self, dom.UUIDString(), set([kinds] if isinstance(kinds, str) else kinds), match)
        with self._lock:
            self._waiters.append(w)
        return w

    def _remove(self, w: Waiter) -> None:
        with self._lock:
            if w in self._waiters:
                self._waiters.remove(w)

    def _dispatch(self, ev: Event) -> None:
        with self._lock:
            ws = list(self._waiters)
        for w in ws:
            w._offer(ev)

    def _lifecycle(self, conn, dom, event, detail, opaque):
        self._dispatch(Event("lifecycle", dom.UUIDString(),
                             {"event": LIFECYCLE_NAMES.get(event, str(event)), "detail": detail}))

    def _removed(self, conn, dom, alias, opaque):
        self._dispatch(Event("device-removed", dom.UUIDString(), {"alias": alias}))

    def _removal_failed(self, conn, dom, alias, opaque):
        self._dispatch(Event("device-removal-failed", dom.UUIDString(), {"alias": alias}))

    def _added(self, conn, dom, alias, opaque):
        self._dispatch(Event("device-added", dom.UUIDString(), {"alias": alias}))

    def _io_error(self, conn, dom, src, dev, action, reason, opaque):
        self._dispatch(Event("io-error", dom.UUIDString(),
                             {"source": src, "device": dev, "action": action, "reason": reason}))


class Session:
    """A libvirt connection owned by the harness.  When libvirtd restarts, the
    next use of `conn` reconnects (within a deadline) and bumps `generation`, so
    holders of domain objects look them up again."""

    def __init__(self, uri: str, timeout_s: float = 10.0):
        _ensure_event_loop()
        self.uri = uri
        self.timeout_s = timeout_s
        self.closed_reason: str | None = None
        self.unanswered = False           # the daemon's keepalive ran out: it stopped answering
        self._gave_up_at: float | None = None     # when answers() last found no answer
        # judge(message) -> the exception to raise when the daemon stopped answering and a
        # new connection gets no answer either (the run sets it: it can look at the lab host)
        self.judge = None
        self.generation = 0
        self.reconnects = 0
        self._conn = self._open(timeout_s)
        self.events = EventHub(self._conn)

    def _open(self, timeout_s: float) -> libvirt.virConnect:
        result: dict = {}

        def do_open():
            try:
                result["conn"] = libvirt.open(self.uri)
            except libvirt.libvirtError as e:
                result["err"] = e

        t = threading.Thread(target=do_open, daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            raise LabUnreachable(f"libvirt at {self.uri} did not answer within {timeout_s:.0f}s "
                                 "(is libvirtd running? './harness setup' starts it on the local lab)")
        if "err" in result:
            raise LabUnreachable(f"cannot connect to libvirt at {self.uri}: {result['err'].get_error_message()} "
                                 "(is libvirtd running? './harness setup' starts it on the local lab)")
        conn = result["conn"]
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass    # the test:/// driver has no keepalive
        conn.registerCloseCallback(self._on_close, None)
        return conn

    @property
    def conn(self) -> libvirt.virConnect:
        if self.closed_reason is not None or not self._alive():
            self.reconnect(Deadline(30, f"libvirt at {self.uri} to come back"))
        return self._conn

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def reconnect(self, deadline: Deadline) -> None:
        last = ""
        while not deadline.expired:
            try:
                conn = self._open(min(10.0, max(deadline.remaining, 1.0)))
            except LabUnreachable as e:
                last = str(e)
                time.sleep(0.5)
                continue
            old, self._conn = self._conn, conn
            try:
                old.close()
            except libvirt.libvirtError:
                pass
            self.events.bind(conn)
            self.closed_reason = None
            self.unanswered = False
            self.generation += 1
            self.reconnects += 1
            return
        msg = (f"lost the libvirt connection to {self.uri} ({self.closed_reason or 'not alive'}) and could not "
               f"reconnect within {deadline.budget:.0f}s: {last}")
        if self.unanswered and self.judge is not None:
            raise self.judge(msg)
        raise LabUnreachable(msg)

    def answers(self, seconds: float) -> bool:
        """Whether the daemon answers (again) within `seconds`: a reconnect if needed.  Once
        it did not, the next asks within a minute wait 2 s at most (a teardown asks per VM)."""
        if self.closed_reason is None and self._alive():
            return True
        if self._gave_up_at is not None and time.monotonic() - self._gave_up_at < 60:
            seconds = min(seconds, 2.0)
        try:
            self.reconnect(Deadline(seconds, f"libvirt at {self.uri} to answer again", scaled=False))
            self._gave_up_at = None
            return True
        except (LabUnreachable, LibvirtdStoppedAnswering):
            self._gave_up_at = time.monotonic()
            return False

    def _on_close(self, conn, reason, opaque):
        self.closed_reason = {0: "error", 1: "end-of-file", 2: "keepalive timeout", 3: "client closed"}.get(reason, str(reason))
        if reason == 2:
            self.unanswered = True

    def versions(self) -> dict:
        def fmt(v):
            return f"{v // 1000000}.{(v // 1000) % 1000}.{v % 1000}"
        out = {"libvirt": fmt(self.conn.getLibVersion())}
        try:
            out["hypervisor"] = f"{self.conn.getType()} {fmt(self.conn.getVersion())}"
        except libvirt.libvirtError:
            out["hypervisor"] = self.conn.getType()
        return out

    def close(self) -> None:
        try:
            self._conn.unregisterCloseCallback()
            self._conn.close()
        except libvirt.libvirtError:
            pass
