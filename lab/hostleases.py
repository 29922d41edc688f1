"""Leases on the lab host: which run is alive there, and who holds its scarce things.

A run's liveness and everything scarce it holds on a lab host (its run lease, the guest
SSH forward ports on the lab host's loopback, a PF, a USB device, a slot) are file locks
in the lab host's `<host work_dir>/leases`, held by one small process there per run (the
*holder*, a bash loop started over the run's own SSH channel, or as a child on a local
lab host).  A lock dies with its holder, and the holder dies when its stdin closes: when
the run closes, and when the controller dies however it dies (SIGKILL included: the SSH
connection or the pipe closes).  So every controller that uses the lab host, whatever
machine and work dir it runs from, sees the same truth: a run whose lease is held is
alive and is never touched; a run whose lease is free is dead and its leftovers are the
next sweeper's, whichever controller that is.

A sweeper takes a dead run's lease itself before it removes anything of that run, so
two sweepers never sweep one run at once, and the file goes only while its taker holds
it (a taker checks that the file it locked is still the one at the path).

Each lease file holds its owner: controller host, user, pid, work dir and run.
"""
from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import dataclass

from .errors import LabError
from .hostexec import HostProcessEnded, LabPath

HOLDER = r'''
set -u
declare -A fds=()
while IFS= read -r line; do
  op=${line%% *}; rest=${line#* }
  case $op in
  L) path=${rest%%$'\t'*}; owner=${rest#*$'\t'}
     mkdir -p -- "${path%/*}" 2>/dev/null
     if [ -n "${fds[$path]:-}" ]; then echo ok; continue; fi
     if ! exec {fd}>>"$path"; then echo "err cannot open $path"; continue; fi
     if ! flock -n "$fd"; then
       exec {fd}>&-; echo "busy $(head -c 400 -- "$path" 2>/dev/null | tr '\n\t' '  ')"; continue
     fi
     if [ "$(stat -L -c %d:%i -- "$path" 2>/dev/null)" != "$(stat -L -c %d:%i /dev/fd/$fd)" ]; then
       exec {fd}>&-; echo "busy (its lease file was just removed)"; continue
     fi
     : > "$path"; printf '%s\n' "$owner" >&"$fd"
     fds[$path]=$fd; echo ok ;;
  U|D) path=$rest; fd=${fds[$path]:-}
     if [ -n "$fd" ]; then
       [ "$op" = D ] && rm -f -- "$path"
       exec {fd}>&-; unset "fds[$path]"
     fi
     echo ok ;;
  T) if (exec 3<>"/dev/tcp/127.0.0.1/$rest") 2>/dev/null; then echo listening; else echo ok; fi ;;
  P) echo ok ;;
  *) echo "err unknown request $op" ;;
  esac
done
'''

# One line per lease file of a directory: name, held|free, owner.  Run with sh -c, $1 = the dir.
STATES = r'''
for f in "$1"/*.lock; do
  [ -e "$f" ] || continue
  if flock -n "$f" true 2>/dev/null; then st=free; else st=held; fi
  printf '%s\t%s\t%s\n' "${f##*/}" "$st" "$(head -c 400 -- "$f" 2>/dev/null | tr '\n\t' '  ')"
done
'''


class LeaseError(LabError):
    """A lease on the lab host could not be taken or kept."""


class LeaseBusy(LeaseError):
    def __init__(self, what: str, holder: str, fix: str = ""):
        super().__init__(f"{what} is held by {holder or 'another run'}" + (f"; fix: {fix}" if fix else ""))
        self.holder = holder


class HostBusy(LeaseBusy):
    """Every slot of the lab host is held."""


class DeviceBusy(LeaseBusy):
    """A scarce device of the lab host is leased by another run."""


class PortsExhausted(LeaseError):
    """Every guest SSH forward port of the lab's range is taken: the lab config's to fix."""


def controller_identity(work_dir, run_id: str = "") -> str:
    """Who holds a lease: this controller (machine, user, process, work dir) and run."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return (f"controller {socket.gethostname()} user {user} pid {os.getpid()} work_dir {work_dir}"
            + (f" run {run_id}" if run_id else "") + f" since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")


def run_lease(host_work_dir, run_id: str) -> LabPath:
    """The lease file that says a run is alive on its lab host."""
    return LabPath(str(host_work_dir)) / "leases" / f"run-{run_id}.lock"


@dataclass
class HostLease:
    """One lease held by a holder; `value`: what it leases (a port number, a device)."""
    holder: "LeaseHolder"
    path: LabPath
    value: object = None

    def release(self, remove: bool = True) -> None:
        self.holder.release(self.path, remove=remove)


@dataclass
class LeaseState:
    held: bool
    owner: str


def lease_states(host, directory) -> dict[str, LeaseState]:
    """The lease files of `directory` on the lab host, by file name: held or free, and by whom
    (one command on the lab host)."""
    r = host.run("bash", "-c", STATES, "states", str(directory), check=False)
    out = {}
    for line in r.stdout.splitlines():
        name, _, rest = line.partition("\t")
        st, _, owner = rest.partition("\t")
        if name:
            out[name] = LeaseState(st == "held", owner.strip())
    return out


class LeaseHolder:
    """The one process on the lab host that holds this run's leases (see the module's doc).
    `owner`: written into every lease it takes."""

    def __init__(self, host, directory, owner: str, log=None):
        self.host, self.dir, self.owner, self.log = host, LabPath(str(directory)), owner, log
        self._held: dict[str, str] = {}        # path -> owner text it was taken with
        self._proc = None
        self.last_busy = ""
        self._open()

    def _open(self) -> None:
        try:
            self._proc = self.host.start("bash", "-c", HOLDER, what="the harness's lease holder")
            self._proc.ask("P")
        except HostProcessEnded as e:
            raise LeaseError(f"lab host {self.host.name}: the lease holder (bash, flock, stat) does not run: {e}; "
                             "fix: install bash and util-linux on the lab host") from None

    def _ask(self, line: str) -> str:
        """One request; a holder that ended (its connection dropped) is started again and
        takes back every lease it held, or the run learns at once that one went to another."""
        try:
            return self._proc.ask(line)
        except HostProcessEnded as e:
            if self._proc is None:
                raise LeaseError(f"the lease holder on lab host {self.host.name} was closed") from None
            if self.log:
                self.log(f"[lab] the lease holder on lab host {self.host.name} ended ({e}); taking its leases again")
            self._open()
            for path, owner in list(self._held.items()):
                ans = self._proc.ask(f"L {path}\t{owner}")
                if ans != "ok":
                    del self._held[path]
                    raise LeaseError(f"lab host {self.host.name}: the lease {path} was lost while the connection "
                                     f"was down and is now {ans}") from None
            return self._proc.ask(line)

    def take(self, name_or_path, owner: str | None = None, value=None) -> HostLease | None:
        """The lease at `name_or_path` (a file name in this holder's directory, or a lab host
        path), or None when someone holds it (`self.last_busy` says who)."""
        path = LabPath(str(name_or_path)) if "/" in str(name_or_path) else self.dir / str(name_or_path)
        owner = (owner or self.owner).replace("\n", " ").replace("\t", " ")
        ans = self._ask(f"L {path}\t{owner}")
        if ans == "ok":
            self._held[str(path)] = owner
            return HostLease(self, path, value)
        if ans.startswith("busy"):
            self.last_busy = ans[4:].strip()
            return None
        raise LeaseError(f"lab host {self.host.name}: lease {path}: {ans}")

    def release(self, path, remove: bool = True) -> None:
        """Give a lease back (and remove its file: `remove`); one that is not held is no error."""
        if self._proc is None or str(path) not in self._held:
            return
        del self._held[str(path)]
        try:
            self._proc.ask(("D " if remove else "U ") + str(path))
        except HostProcessEnded:
            pass            # the holder is gone: so is the lock

    def holds(self, path) -> bool:
        return str(path) in self._held

    def close(self) -> None:
        """Every lease goes (the holder ends); their files stay, free, for the next sweeper."""
        if self._proc is not None:
            for path in list(self._held):
                self.release(path)
            self._proc.close()
            self._proc = None

    # ---------------------------------------------------------------- scarce things

    def wait_take(self, name: str, what: str, deadline, value=None,
                  fix: str = "run again when that run ends, or give this run another device in the lab config"
                  ) -> HostLease:
        """`take`, polled until `deadline` (None: one try); then DeviceBusy naming the holder."""
        while True:
            lease = self.take(name, value=value)
            if lease is not None:
                return lease
            if deadline is None or deadline.expired:
                raise DeviceBusy(what + (f" (waited {deadline.budget:.0f}s)" if deadline else ""), self.last_busy, fix)
            time.sleep(0.3)

    def port(self, base: int, span: int = 2000) -> HostLease:
        """A TCP port on the lab host's loopback for a guest's SSH forward: leased here, across
        every controller using the lab host, and not listening there now."""
        for port in range(base, base + span):
            lease = self.take(f"port-{port}.lock", value=port)
            if lease is None:
                continue
            if self._ask(f"T {port}") == "ok":      # nothing listens there (asked on the lab host)
                return lease
            lease.release()
        raise PortsExhausted(f"no free port on lab host {self.host.name}'s loopback in {base}..{base + span - 1} "
                             "for guest SSH; fix: change [ssh] port_base in the lab config")

    def device(self, kind: str, ident: str, deadline=None) -> HostLease:
        """An exclusive lease on a scarce device of the lab host (a PF, a USB device, an HPRE),
        across runs, workers and controllers; waits until `deadline`, then names the holder."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in ident)
        return self.wait_take(f"dev-{kind}-{safe}.lock", f"{kind} {ident} on lab host {self.host.name}",
                              deadline, value=ident)

    def slot(self, slots: int, config_name: str, deadline, log=None) -> HostLease:
        """One of the lab host's `slots` (how many workers may drive it at once, across runs and
        controllers); waits until `deadline`, then refuses naming the holders."""
        said = False
        while True:
            for i in range(slots):
                lease = self.take(f"slot-{i}.lock", value=i)
                if lease is not None:
                    return lease
            holders = "; ".join(s.owner or "?" for n, s in sorted(lease_states(self.host, self.dir).items())
                                if n.startswith("slot-") and s.held)
            if deadline.expired:
                raise HostBusy(f"every one of the {slots} slot(s) of lab host {self.host.name} (waited "
                               f"{deadline.budget:.0f}s)", holders,
                               f"wait for those runs, or raise [host] slots in {config_name}")
            if log and not said:
                log(f"[lab] waiting for a free slot on lab host {self.host.name} (held by: {holders})")
                said = True
            time.sleep(0.5)
