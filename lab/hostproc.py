"""What a QEMU process really does on the lab host, read from its /proc through
the lab host's `Host`: which files it holds open and with which flags, whether it
set up Linux native AIO; what the kernel has (device-mapper); and this machine's
own processes (the sweeper's helpers)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

def pid_by_file(pidfile: Path, is_ours) -> int | None:
    """The process a pid file names, if it still runs and `is_ours(argv)` (never a
    recycled pid); without a readable pid file, the first process that `is_ours`."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = None
    for p, argv in processes():
        if is_ours(argv) and (pid is None or p == pid):
            return p
    return None


def terminate(pid: int, gone, what: str) -> None:
    """SIGTERM, up to 20 s for `gone()`, then SIGKILL and up to 10 s more."""
    import signal
    from .timeouts import Deadline, poll
    os.kill(pid, signal.SIGTERM)
    try:
        poll(gone, Deadline(20, f"{what} ({pid}) to exit", scaled=False), interval=0.1)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        poll(gone, Deadline(10, f"{what} ({pid}) to die", scaled=False), interval=0.1)


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is a child of this process and has ended, so
    it leaves no zombie behind (a zombie keeps its /proc entry); else nothing.  Called
    once the process is gone from the process table's view (no argv): its exit is then
    a matter of moments, given 5 s."""
    from .timeouts import Deadline, poll

    def collected():
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:
            return True     # not our child, or already collected (by subprocess)
    poll(collected, Deadline(5, f"process {pid}'s exit status", scaled=False), interval=0.05)


def processes(proc: Path = Path("/proc")):
    """(pid, argv) of every process still there to be read."""
    for p in proc.iterdir():
        if p.name.isdigit():
            try:
                argv = [a.decode(errors="replace") for a in (p / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            if argv:
                yield int(p.name), argv


# Prints each process as "<pid>\t<argv, NUL-separated>", one per line.
_PROCESSES = r'''
for d in /proc/[0-9]*; do
  a=$(tr '\0' '\001' < "$d/cmdline" 2>/dev/null) || continue
  [ -n "$a" ] && printf '%s\t%s\n' "${d#/proc/}" "$a"
done
exit 0
'''


def qemu_guest(argv: list[str]) -> str | None:
    """The guest name a QEMU process was started with (`-name guest=NAME,...`), if any."""
    if "-name" not in argv[:-1]:
        return None
    arg = argv[argv.index("-name") + 1]
    return arg.split(",")[0].removeprefix("guest=") if arg.startswith("guest=") else None


def host_processes(host):
    """(pid, argv) of every process on the lab host."""
    for line in host.run("sh", "-c", _PROCESSES, check=False).stdout.splitlines():
        pid, _, args = line.partition("\t")
        argv = [a for a in args.split("\x01") if a]
        if pid.isdigit() and argv:
            yield int(pid), argv


# Prints "<fd> <flags>" for each descriptor of pid $1 that refers to $2 (resolved on the host).
_OPEN_FLAGS = r'''
target=$(readlink -f "$2")
for fd in /proc/$1/fd/*; do
  [ "$(readlink "$fd" 2>/dev/null)" = "$target" ] || continue
  sed -n "s/^flags:[[:space:]]*/${fd##*/} /p" "/proc/$1/fdinfo/${fd##*/}" 2>/dev/null
done
exit 0
'''


def parse_open_flags(text: str) -> list[int]:
    """`<fd> <octal flags>` lines -> the flags."""
    return [int(line.split()[1], 8) for line in text.splitlines() if len(line.split()) == 2]


def open_flags(host, pid: int, path) -> list[int]:
    """The open flags of every descriptor of process `pid` on the lab host that refers to `path`."""
    return parse_open_flags(host.run("sh", "-c", _OPEN_FLAGS, "sh", str(pid), str(path)).stdout)


# The completion counter (`tail`, the 4th u32 of struct aio_ring: id, nr, head, tail, magic)
# of every Linux AIO ring (io_setup) of process $1: the kernel moves it once per I/O that
# completes through that ring, whoever else shares it.
_AIO_TAILS = r'''
grep -F '/[aio]' "/proc/$1/maps" | while read -r range rest; do
  start=${range%%-*}
  dd if="/proc/$1/mem" bs=4096 skip=$((0x$start / 4096)) count=1 2>/dev/null | od -An -tu4 -N20 -v | tr -s ' \n' ' '
  echo
done
'''
AIO_RING_MAGIC = 0xa10a10a1


def parse_aio_tails(text: str) -> list[int]:
    """od's `id nr head tail magic` lines -> each ring's completion counter (rings whose
    header does not carry the kernel's magic are left out)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 5 and int(f[4]) == AIO_RING_MAGIC:
            out.append(int(f[3]))
    return out


def aio_completions(host, pid: int) -> list[int]:
    """The completion counter of each Linux AIO ring of process `pid` on the lab host (an
    empty list: it set up none).  Read from the ring's header in the process's memory."""
    return parse_aio_tails(host.run("sh", "-c", _AIO_TAILS, "sh", str(pid)).stdout)


def kernel_has_device_mapper(proc_misc: Path = Path("/proc/misc"), text: str | None = None) -> bool:
    """Asked of the kernel: libdevmapper (run by libvirt, for one) creates
    /dev/mapper/control even where the kernel has no device-mapper."""
    try:
        text = proc_misc.read_text() if text is None else text
    except OSError:
        return False
    return any(line.split()[-1] == "device-mapper" for line in text.splitlines() if line.split())


# Samples "<pid>\t<state>\t<utime+stime ticks>" of pids $2.. twice, $1 seconds apart, then
# prints the clock's ticks per second: what a process is doing, read from /proc/<pid>/stat.
_STATES = r'''
t=$1; shift
sample() { for p in "$@"; do
  s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
  s=${s##*) }; set -- $s; printf '%s\t%s\t%s\n' "$p" "$1" "$(( ${12} + ${13} ))"
done; }
sample "$@"; echo --; sleep "$t"; sample "$@"; echo "-- $(getconf CLK_TCK 2>/dev/null || echo 100)"
'''


@dataclass(frozen=True)
class ProcState:
    pid: int
    what: str            # "libvirtd", "QEMU of acc-...-ios-1"
    state: str           # /proc/<pid>/stat's state letter at the second sample ("" if gone)
    cpu: float           # share of one CPU between the samples

    def describe(self) -> str:
        if not self.state:
            return f"{self.what} (pid {self.pid}) is gone"
        return f"{self.what} (pid {self.pid}) state {self.state} ({STATE_NAMES.get(self.state, '?')}), {self.cpu:.0%} of a CPU"


STATE_NAMES = {"R": "running", "S": "sleeping", "D": "waiting on I/O", "T": "stopped", "t": "stopped by a tracer",
               "Z": "zombie", "I": "idle"}


def parse_states(text: str, names: dict[int, str], seconds: float) -> list[ProcState]:
    """ProcStates from _STATES's output (processes that vanished have state '')."""
    first, second, hz = {}, {}, 100
    part = first
    for line in text.splitlines():
        if line.startswith("--"):
            tail = line[2:].strip()
            if part is second and tail.isdigit():
                hz = int(tail)
            part = second
            continue
        f = line.split("\t")
        if len(f) == 3 and f[0].isdigit() and f[2].isdigit():
            part[int(f[0])] = (f[1], int(f[2]))
    out = []
    for pid, what in names.items():
        st, t1 = second.get(pid, ("", 0))
        t0 = first.get(pid, ("", t1))[1]
        out.append(ProcState(pid, what, st, max(t1 - t0, 0) / hz / seconds if st else 0.0))
    return out


def daemon_and_qemu_states(host, qemu_prefix: str, seconds: float = 1.0) -> list[ProcState]:
    """The lab host's libvirt daemons (libvirtd, virtqemud) and the QEMU processes whose
    guest name starts with `qemu_prefix`, each with its state and CPU use over `seconds`."""
    names: dict[int, str] = {}
    for pid, argv in host_processes(host):
        exe = os.path.basename(argv[0])
        if exe in ("libvirtd", "virtqemud"):
            names[pid] = exe
        elif (qemu_guest(argv) or "").startswith(qemu_prefix):
            names[pid] = f"QEMU of {qemu_guest(argv)}"
    if not names:
        return []
    r = host.run("sh", "-c", _STATES, "sh", str(seconds), *map(str, names), check=False, timeout=10 + seconds)
    return parse_states(r.stdout, names, seconds)
