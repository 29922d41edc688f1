"""Debian root trees built offline from the machine's own apt mirror: debootstrap,
commands in a chroot (inside a private mount namespace, so a crash leaves no mount
behind), files written into the tree.  Shared by the nested lab's L1 image and the
distribution guest images (lab/cloud_image.py).

The mirror is the machine's own apt source (read from /etc/apt), never a host
written into the repository.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .arch import ArchProfile
from .images import ImageError


def apt_mirrors(etc: Path = Path("/etc/apt")) -> dict[str, str]:
    """suite -> mirror URI, from the machine's apt sources (deb822 and one-line)."""
    out: dict[str, str] = {}
    for f in sorted(etc.glob("sources.list.d/*.sources")):
        for stanza in f.read_text().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if fields.get("Types", "deb").split()[0] != "deb" or fields.get("Enabled", "yes") == "no":
                continue
            for suite in fields.get("Suites", "").split():
                out.setdefault(suite, fields.get("URIs", "").split()[0])
    if (etc / "sources.list").exists():
        for line in (etc / "sources.list").read_text().splitlines():
            m = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if m:
                out.setdefault(m.group(2), m.group(1))
    return out


def mirror(suite: str, what: str) -> str:
    m = apt_mirrors()
    if suite not in m:
        raise ImageError(f"no apt source for suite {suite!r} in /etc/apt ({what} is built from the machine's "
                         f"own Debian mirror): add a 'deb' source for {suite}")
    return m[suite]


def candidate(pkg: str) -> str:
    r = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", r.stdout)
    if not m or m.group(1) == "(none)":
        raise ImageError(f"apt knows no candidate for {pkg}: run 'apt-get update' (./harness setup does)")
    return m.group(1)


def unpack_debs(debs: Path, dest: Path, stamp: str) -> None:
    """Every .deb in `debs` unpacked (never installed) into `dest`, replaced whole and
    atomically; `dest/.stamp` says what it holds (the caller's cache key)."""
    tmp = dest.with_name(dest.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        sh(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
    (tmp / ".stamp").write_text(stamp + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on `path` (made if missing) for as long as the block runs: two
    processes that build the same cache entry take turns (the second finds it built)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def unpacked(dest: Path, stamp: str) -> bool:
    """`dest` holds what `unpack_debs` put there under `stamp`."""
    f = dest / ".stamp"
    return f.exists() and f.read_text().strip() == stamp


def sh(cmd: list[str], what: str, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {r.returncode}):\n{tail}")
    return r.stdout


# $1 = root folder; /proc, /sys and /dev reach the chroot only inside this mount namespace.
_CHROOT_SETUP = r'''
set -e
r=$1; shift
mount -t proc proc "$r/proc"
mount -t sysfs sys "$r/sys"
mount --bind /dev "$r/dev"
exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
'''


@dataclass(frozen=True)
class Emulator:
    """QEMU's user-mode emulator for a foreign root's programs, and the binfmt_misc rule
    (ELF magic and mask) that hands them to it."""
    interpreter: Path
    rule: str

    @classmethod
    def for_arch(cls, arch: ArchProfile, cache: Path, what: str) -> "Emulator | None":
        """None when this machine runs `arch`'s programs itself; else Debian's
        qemu-user-static, downloaded and unpacked into `cache` (never installed: installing
        it would register it with this machine's binfmt_misc)."""
        if arch.name == host_arch():
            return None
        if not arch.qemu_user:
            raise ImageError(f"{what}: no user-mode emulator is known for {arch.name} (lab/arch.py qemu_user)")
        version = candidate("qemu-user-static")
        dest = cache / "qemu-user-static"
        with locked(cache / ".qemu-user-static.lock"):
            if not unpacked(dest, version):
                debs = cache / ".qemu-user-static-debs"
                shutil.rmtree(debs, ignore_errors=True)
                debs.mkdir(parents=True)
                sh(["apt-get", "download", f"qemu-user-static={version}"], f"{what}: apt-get download qemu-user-static",
                   cwd=debs)
                unpack_debs(debs, dest, version)
                shutil.rmtree(debs, ignore_errors=True)
        # Debian's -binfmt-P name makes the emulator take the program's own argv[0] from the kernel
        interp = dest / "usr/libexec/qemu-binfmt" / f"{arch.qemu_user}-binfmt-P"
        if not interp.exists():
            raise ImageError(f"{what}: qemu-user-static {version} has no {interp.name}")
        esc = lambda b: "".join(f"\\x{c:02x}" for c in b)      # noqa: E731
        return cls(interp, f":acc-{arch.qemu_user}:M::{esc(arch.elf_magic)}:{esc(arch.elf_mask)}:{interp}:FP")


def host_arch() -> str:
    """This machine's architecture by QEMU's and libvirt's name (x86_64, aarch64)."""
    return os.uname().machine


# A foreign root: in a user namespace of its own (uids mapped 1:1, so files keep their
# owners), with a binfmt_misc instance of its own (Linux >= 6.7) that runs the root's
# programs through QEMU's user-mode emulator.  This machine's binfmt_misc is never touched,
# and the namespace's mounts go with it.  A line on fd $1 says the uid map is written.
_EMULATED_SETUP = r'''
set -e
read _ <&"$1"
r=$2; rule=$3; shift 3
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
printf '%s\n' "$rule" > /proc/sys/fs/binfmt_misc/register
mount --rbind /proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
  container=lxc "$@"
'''


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies."""
    import ctypes
    import signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # PR_SET_PDEATHSIG


def _emulated(root: Path, argv: tuple, emu: Emulator, what: str, input: str | None) -> str:
    go_r, go_w = os.pipe()
    # In a PID namespace of its own, whose first process dies with unshare (--kill-child),
    # and unshare dies with this process: a build interrupted anyhow leaves no process behind.
    p = subprocess.Popen(["unshare", "--user", "--mount", "--propagation", "private", "--pid", "--fork",
                          "--kill-child", "sh", "-c", _EMULATED_SETUP, "sh", str(go_r), str(root), emu.rule, *argv],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         pass_fds=(go_r,), preexec_fn=_die_with_parent)
    os.close(go_r)
    try:
        mine = os.readlink("/proc/self/ns/user")
        t0 = time.monotonic()
        while True:                         # unshare(1) has made its user namespace
            try:
                if os.readlink(f"/proc/{p.pid}/ns/user") != mine:
                    break
            except FileNotFoundError:
                pass
            if p.poll() is not None or time.monotonic() - t0 > 10:
                raise ImageError(f"{what}: unshare --user did not make a user namespace "
                                 f"(exit {p.poll()}): {p.stdout.read()[-500:] if p.stdout else ''}")
            time.sleep(0.01)
        for m in ("uid_map", "gid_map"):    # every id maps to itself: dpkg's chown of system users works
            with open(f"/proc/{p.pid}/{m}", "w") as f:
                f.write("0 0 4294967295\n")
        os.write(go_w, b"go\n")
        os.close(go_w)
        go_w = -1
    except BaseException:
        if go_w >= 0:
            os.close(go_w)
        p.kill()
        p.wait()
        raise
    try:
        out, _ = p.communicate(input)
    except BaseException:            # Ctrl-C, a deadline: the namespace and all in it go
        p.kill()
        p.wait()
        raise
    if p.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {p.returncode}, emulated by {emu.interpreter.name}):\n{tail}")
    return out


def chroot(root: Path, *argv: str, what: str, input: str | None = None, emulator: Emulator | None = None) -> str:
    if emulator is not None:
        return _emulated(root, argv, emulator, what, input)
    return sh(["unshare", "-m", "--propagation", "private", "sh", "-c", _CHROOT_SETUP, "sh", str(root), *argv], what,
              input=input)


def debootstrap(root: Path, suite: str, packages: list[str], what: str, arch: ArchProfile | None = None,
                emulator: Emulator | None = None) -> None:
    """A minbase root with `packages`, apt pointed at the suite, its updates and security.
    A foreign `arch` is unpacked here and configured by its own programs under `emulator`."""
    main, security = mirror(suite, what), mirror(f"{suite}-security", what)
    foreign = ["--arch", arch.deb_arch, "--foreign"] if emulator is not None else []
    sh(["debootstrap", *foreign, "--variant=minbase", "--components=main", f"--include={','.join(packages)}",
        suite, str(root), main], f"{what}: debootstrap")
    if emulator is not None:
        chroot(root, "/debootstrap/debootstrap", "--second-stage", what=f"{what}: debootstrap --second-stage",
               emulator=emulator)
    (root / "etc/apt/sources.list").write_text(
        f"deb {main} {suite} main\ndeb {main} {suite}-updates main\ndeb {security} {suite}-security main\n")
    chroot(root, "apt-get", "update", "-qq", what=f"{what}: apt-get update in the root", emulator=emulator)


def install(root: Path, packages: list[str], what: str, emulator: Emulator | None = None) -> None:
    chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages,
           what=f"{what}: installing {', '.join(packages)}", emulator=emulator)


def install_kernel(root: Path, packages: list[str], what: str, emulator: Emulator | None = None) -> None:
    """`packages` with a kernel among them, and its initramfs made once: the kernel's own hook
    (INITRD=No) and initramfs-tools' trigger would each make it, which under an emulator
    takes minutes apiece."""
    chroot(root, "env", "INITRD=No", "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages,
           what=f"{what}: installing {', '.join(packages)}", emulator=emulator)
    chroot(root, "update-initramfs", "-c", "-k", "all", what=f"{what}: update-initramfs", emulator=emulator)


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.chmod(p, mode)


def prune_docs(root: Path) -> None:
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / rel, ignore_errors=True)
