"""The namespace lab host: a remote lab host on this machine, for CI.

A lab host the controller reaches exactly as it reaches a real one, over
`qemu+ssh://` and `[shell]` SSH with a pinned host key, and whose files the
controller cannot see.  It lives in its own mount, network and PID namespaces:

- its own OpenSSH sshd (Debian's openssh-server, unpacked into the lab dir, never
  installed), its own libvirtd and virtlogd, its own /run, /tmp and sysfs (so it
  sees its own network devices), its own loopback;
- its disk is `<lab dir>/store`, bound over /srv (the harness's work dir there is
  /srv/acc-harness, a path that does not exist for the controller), /etc/libvirt,
  /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt;
- the controller's own directories (the harness's work dirs and the repository)
  are hidden under empty read-only mounts: code that hands a controller path to the
  lab host, or reads a lab host path on the controller, fails there.

The only way in is 127.0.0.1:<port> on the controller: the lab host's first
process holds that listening socket (made before it left the controller's network
namespace) and forwards each connection to its sshd on its own 127.0.0.1:22.
Guests run under TCG at local speed.  Stopping it kills the namespace's first
process, and with it every process of the lab host; its mounts, taps and bridges
go with the namespaces.  A crashed run's lab host is stopped by the next start.
"""
from __future__ import annotations

import socket
import subprocess

import time
from dataclasses import dataclass
from pathlib import Path

from ..hostproc import pid_by_file
from ..images import ImageError
from ..nested import l1
from ..timeouts import Deadline

OPENSSH_PACKAGES = ["openssh-server", "openssh-sftp-server", "libwrap0"]
# The lab host's work dir for the harness (its [shell] work_dir): under /srv, which is
# the lab host's store there and an empty directory on the controller.
HOST_WORK_DIR = "/srv/acc-harness"

# Runs inside the new namespaces, as a child of their first process.  $1 = lab dir,
# $2 = the daemon prepare script, then the controller directories to hide.
SETUP = r'''
set -e
L=$1; prepare=$2; shift 2
S=$L/store; R=/run/acc-lab-host
# Its own /run and /tmp.
mount -t tmpfs -o mode=0755 acc-lab-run /run
mkdir -p /run/lock /run/sshd /run/libvirt $R /run/acc-cg
mount -t tmpfs -o mode=1777 acc-lab-tmp /tmp
# Its own sysfs (its own network devices); the cgroup mounts move over.
mount --rbind /sys/fs/cgroup /run/acc-cg
mount -t sysfs acc-lab-sys /sys
mount --move /run/acc-cg /sys/fs/cgroup
ip link set lo up
# sshd's files, copied in before the controller's directories are hidden.
cp -a "$L/openssh" "$R/openssh"
install -m 600 "$L/lab_host_key" "$R/host_key"
install -m 600 "$L/lab_key.pub" "$R/authorized_keys"
cp /etc/passwd "$R/passwd"
grep -q '^sshd:' "$R/passwd" || echo 'sshd:x:65533:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin' >> "$R/passwd"
mount --bind "$R/passwd" /etc/passwd
cat > "$R/sshd_config" <<EOF
ListenAddress 127.0.0.1:22
HostKey $R/host_key
AuthorizedKeysFile $R/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
MaxStartups 200
MaxSessions 100
PidFile /run/sshd.pid
Subsystem sftp $R/openssh/usr/lib/openssh/sftp-server
EOF
# Its disk.
mkdir -p "$S/work" "$S/libvirt"
sh -c "$prepare" sh "$S/libvirt" "" ""
mount --bind "$S/work" /srv
mount --bind "$S/libvirt/etc" /etc/libvirt
mount --bind "$S/libvirt/lib" /var/lib/libvirt
mount --bind "$S/libvirt/cache" /var/cache/libvirt
mount --bind "$S/libvirt/log" /var/log/libvirt
mkdir -p /var/log/libvirt/qemu
# The controller's directories: gone for the lab host.
for d in "$@"; do
  if [ -d "$d" ]; then mount -t tmpfs -o ro,size=4k,mode=0755 acc-lab-hidden "$d"; fi
done
virtlogd -d
libvirtd -d
LD_LIBRARY_PATH=$(echo "$R"/openssh/usr/lib/*-linux-gnu) "$R/openssh/usr/sbin/sshd" -f "$R/sshd_config" -E "$R/sshd.log"
echo "lab host up: sshd, libvirtd, virtlogd"
'''

# The lab host's first process (PID 1 of its PID namespace): sets the lab host up,
# reaps orphans, and forwards the controller's connections to its sshd.  Standard
# library only: the repository is hidden from it once SETUP ran.  Written to
# <state>/init.py after SETUP and PREPARE (daemon.PREPARE_SCRIPT).
INIT = r'''
import os, signal, socket, subprocess, sys, threading, time
lab, listen_fd, hide = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
listener = socket.socket(fileno=listen_fd)
r = subprocess.run(["sh", "-c", SETUP, "sh", lab, PREPARE, *hide])
if r.returncode != 0:
    print(f"lab host set-up failed (exit {r.returncode})", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))

def reap():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.5)

def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(c):
    try:
        s = socket.create_connection(("127.0.0.1", 22), timeout=10)
        s.settimeout(None)
    except OSError as e:
        print(f"forward to sshd failed: {e}", flush=True)
        c.close()
        return
    t = threading.Thread(target=pump, args=(s, c), daemon=True)
    t.start()
    pump(c, s)
    t.join()
    c.close(); s.close()

threading.Thread(target=reap, daemon=True).start()
print("lab host forwarding", flush=True)
while True:
    c, _ = listener.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@dataclass(frozen=True)
class Layout(l1.Layout):
    """Where the namespace lab host keeps its files (one directory the harness owns)."""
    KEY, HOST_KEY, STATE, PIDFILE, LOG = "lab_key", "lab_host_key", "state", "unshare.pid", "init.log"

    @property
    def openssh(self) -> Path:
        return self.dir / "openssh"

    @property
    def store(self) -> Path:            # the lab host's disk
        return self.dir / "store"


def _sh(cmd, what, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise ImageError(f"namespace lab host: {what} failed (exit {r.returncode}): "
                         f"{(r.stderr or r.stdout).strip()[-800:]}")
    return r.stdout


def ensure_openssh(lay: Layout, log=print) -> Path:
    """Debian's OpenSSH server and sftp-server, unpacked into the lab dir (cached by the
    packages' versions); the machine gets no sshd of its own."""
    from ..debroot import locked
    with locked(lay.dir / ".openssh.lock"):
        return _ensure_openssh(lay, log)


def _ensure_openssh(lay: Layout, log) -> Path:
    from ..debroot import candidate, unpack_debs, unpacked
    want = " ".join(f"{p}={candidate(p)}" for p in OPENSSH_PACKAGES)
    if unpacked(lay.openssh, want):
        return lay.openssh
    log(f"[nslab] unpacking {want}")
    debs = lay.dir / "debs"
    subprocess.run(["rm", "-rf", str(debs)])
    debs.mkdir(parents=True)
    _sh(["apt-get", "-o", "APT::Sandbox::User=root", "download", *want.split()], "apt-get download of OpenSSH",
        cwd=debs)
    unpack_debs(debs, lay.openssh, want)
    subprocess.run(["rm", "-rf", str(debs)])
    return lay.openssh


def running_pid(lay: Layout) -> int | None:
    """The `unshare` holding this lab dir's lab host, if it runs (checked against its argv)."""
    return pid_by_file(lay.pidfile, lambda argv: argv[0].endswith("unshare") and str(lay.dir) in argv)


def stop(lay: Layout, log=print) -> list[str]:
    """Stop the lab host: its first process dies (unshare --kill-child), and the kernel
    kills every other process of its PID namespace; its mounts, taps and bridges go
    with its namespaces.  The store (guest images, libvirt's config) stays, as a
    lab host's disk does; the harness's sweeper removes what its runs left there."""
    return l1.stop_started(lay, running_pid, "the namespace lab host", "unshare pid", "nslab", log,
                           signal_to=first_process)


def first_process(unshare_pid: int) -> int:
    """The lab host's first process (PID 1 of its namespace), which the signals go to:
    `unshare --fork` ignores SIGTERM while it waits for it.  When it is gone (or not yet
    there), `unshare` itself (--kill-child ends the rest on SIGKILL)."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        children = []
    return int(children[0]) if children else unshare_pid


def hidden_dirs(lay: Layout, controller_dirs) -> list[str]:
    """The controller's directories the lab host must not see: the lab dir's parent
    (this and other labs' files), the harness's work dirs, the repository."""
    out = []
    for d in [lay.dir.parent, *controller_dirs]:
        d = str(Path(d).resolve())
        if d not in out and d != "/":
            out.append(d)
    return out


@dataclass
class NsLabHost:
    lay: Layout
    pid: int
    port: int
    up_s: float


def start(lay: Layout, port: int, controller_dirs=(), log=print, deadline: Deadline | None = None) -> NsLabHost:
    """Start the lab host (a crashed run's first); return once root runs a command over
    SSH there and its libvirtd answers."""
    from ..daemon import PREPARE_SCRIPT
    l1.ensure_keys(lay)
    ensure_openssh(lay, log)
    stop(lay, log)
    lay.state.mkdir(parents=True)
    lay.store.mkdir(exist_ok=True)
    l1.pin_host_key(lay, port)
    listener = _listen(port)
    # Python reads the whole script before it runs it: the state dir may vanish behind it.
    init = lay.state / "init.py"
    init.write_text(f"SETUP = {SETUP!r}\nPREPARE = {PREPARE_SCRIPT!r}\n{INIT}")
    argv = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", "/usr/bin/python3", "-I", str(init), str(lay.dir),
            str(listener.fileno()), *hidden_dirs(lay, controller_dirs)]
    log(f"[nslab] starting the namespace lab host (own mount, network and PID namespaces) with SSH on "
        f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with open(lay.console, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                pass_fds=[listener.fileno()], start_new_session=True)
    listener.close()
    lay.pidfile.write_text(f"{proc.pid}\n")
    host = lay.shell("nslab", port)
    up = _answers(lay, proc, host, port)
    l1.await_up(lay, host, up, deadline or Deadline(60, "the namespace lab host's sshd and libvirtd to answer",
                                                    scaled=False), 0.3, stop, log)
    took = time.monotonic() - t0
    log(f"[nslab] the namespace lab host is up: SSH and libvirtd answered after {took:.1f} s")
    return NsLabHost(lay, proc.pid, port, took)


def _listen(port: int) -> socket.socket:
    """The lab host's SSH port, bound here and handed to its sshd (so a taken port is
    said at once, not as an sshd that never answers)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as e:
        listener.close()
        raise ImageError(f"namespace lab host: 127.0.0.1:{port} is taken ({e}): set [shell] port (and the "
                         f"libvirt_uri's port) of the lab config to a free one") from None
    listener.listen(64)
    return listener


def _answers(lay: Layout, proc: subprocess.Popen, host, port: int):
    """The poll of the starting lab host: True once root runs virsh over SSH there; its
    exit is the failure (with the end of its console)."""
    from paramiko import SSHException

    from ..hostexec import HostCommandFailed
    from ..result import ExecTimeout

    def up():
        if proc.poll() is not None:
            raise ImageError(f"the namespace lab host exited with {proc.returncode}: "
                             f"{lay.console.read_text(errors='replace')[-800:]}")
        if not l1.ssh_banner(port):
            return False
        try:
            return host.run("virsh", "-c", "qemu:///system", "version", check=False, timeout=20).ok
        except (HostCommandFailed, OSError, EOFError, SSHException, ExecTimeout):
            # sshd answers its banner before the system can open a session (still booting)
            host.close()
            return False
    return up
