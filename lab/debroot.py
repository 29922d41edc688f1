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
from pathlib import Path

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


def chroot(root: Path, *argv: str, what: str, input: str | None = None) -> str:
    return sh(["unshare", "-m", "--propagation", "private", "sh", "-c", _CHROOT_SETUP, "sh", str(root), *argv], what,
              input=input)


def debootstrap(root: Path, suite: str, packages: list[str], what: str) -> None:
    """A minbase root with `packages`, apt pointed at the suite, its updates and security."""
    main, security = mirror(suite, what), mirror(f"{suite}-security", what)
    sh(["debootstrap", "--variant=minbase", "--components=main", f"--include={','.join(packages)}",
        suite, str(root), main], f"{what}: debootstrap")
    (root / "etc/apt/sources.list").write_text(
        f"deb {main} {suite} main\ndeb {main} {suite}-updates main\ndeb {security} {suite}-security main\n")
    chroot(root, "apt-get", "update", "-qq", what=f"{what}: apt-get update in the root")


def install(root: Path, packages: list[str], what: str) -> None:
    chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages,
           what=f"{what}: installing {', '.join(packages)}")


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    os.chmod(p, mode)


def prune_docs(root: Path) -> None:
    for rel in ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt/archives", "var/lib/apt/lists"):
        shutil.rmtree(root / rel, ignore_errors=True)
