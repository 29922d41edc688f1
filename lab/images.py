"""Guest images: the default image built offline from Debian packages, a
content-addressed cache, per-VM qcow2 overlays, and NoCloud seeds for lab
hosts that bring their own cloud image.

The default image is three files: a Debian kernel, a tiny initramfs that mounts
the root disk, and a qcow2 root file system (the guest's vda) with busybox,
dropbear and the real `lspci`, `lsusb`, `ethtool`.  The cache key is a hash of
every input (package versions, module lists, guest scripts, builder version),
so a rebuild happens exactly when something changed.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .arch import ArchProfile
from .errors import LabError
from .hostexec import LabPath

BUILDER_VERSION = "6"
HERE = Path(__file__).parent / "guest_image"

# Modules the initramfs needs to mount the root disk.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]
# Modules the claims need inside the guest (loaded at boot, in this order).
GUEST_MODULES = [
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console",
    "scsi_mod", "sd_mod", "isofs", "ahci", "sr_mod",     # the NoCloud seed is a SATA CD-ROM
    "usbcore", "uhci_hcd", "ehci_hcd", "ehci_pci", "xhci_pci", "usb_storage",
    "usbhid", "hid_generic",
    "8021q", "igbvf", "ixgbevf", "iavf",
]
# Modules a kernel of some architecture lacks (arm64 has no UHCI); their claims say so in the guest.
OPTIONAL_MODULES = {"uhci_hcd", "ehci_pci", "igbvf", "ixgbevf", "iavf"}
# Debian packages whose programs are copied into the guest root, with the files.
GUEST_PROGRAMS = {
    "dropbear-bin": ["/usr/sbin/dropbear", "/usr/bin/dropbearkey"],
    "pciutils": ["/usr/bin/lspci"],
    "usbutils": ["/usr/bin/lsusb"],
    "ethtool": ["/usr/sbin/ethtool"],
    "e2fsprogs": ["/usr/sbin/mke2fs"],
}
GUEST_DATA = {"pci.ids": ["/usr/share/misc/pci.ids"]}
HOST_PACKAGES = ["busybox-static", "cpio", "e2fsprogs", "qemu-utils", "kmod",
                 "genisoimage", *GUEST_PROGRAMS, *GUEST_DATA]
ROOT_SIZE = "1G"


class ImageError(LabError):
    pass


@dataclass(frozen=True)
class GuestImage:
    """A built (or lab-provided) guest image."""
    root: Path                   # qcow2 base of the guest's vda
    kernel: Path | None = None   # None: boot the disk through firmware
    initrd: Path | None = None
    digest: str = ""
    access: str = "cmdline"      # how the run's SSH key reaches the guest: cmdline | nocloud
    console_tty: str = "ttyS0"
    firmware: str = "bios"       # what boots a disk without a kernel: bios | efi (the lab config, or the image's own)

    def describe(self) -> str:
        return f"{self.root.name} ({self.digest or 'lab-provided'}, key via {self.access})"


def _run(cmd, **kw):
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except subprocess.CalledProcessError as e:
        raise ImageError(f"image build step failed: {' '.join(map(str, cmd))}: {e.stderr.strip()[-800:]}") from None
    except FileNotFoundError:
        raise ImageError(f"image build needs {cmd[0]!r}; run the lab setup (./harness setup)") from None


def _pkg_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout:
        raise ImageError(f"Debian package {pkg!r} is not installed; run the lab setup (./harness setup)")
    return r.stdout


def resolve_kernel_package(arch: ArchProfile) -> tuple[str, str]:
    """The concrete kernel package behind the arch's meta package, and its version."""
    out = subprocess.run(["apt-cache", "depends", f"{arch.kernel_package}:{arch.deb_arch}"],
                         capture_output=True, text=True).stdout
    m = re.search(r"Depends: (linux-image-[^\s:]+)", out)
    if not m:
        raise ImageError(f"cannot resolve {arch.kernel_package} ({arch.deb_arch}) to a kernel package: run "
                         + ("'apt-get update'" if native(arch) else
                            f"'dpkg --add-architecture {arch.deb_arch} && apt-get update'"))
    pkg = f"{m.group(1)}:{arch.deb_arch}"
    show = _run(["apt-cache", "show", "--no-all-versions", pkg]).stdout
    ver = re.search(r"^Version: (\S+)", show, re.M).group(1)
    return pkg, ver


def native(arch: ArchProfile) -> bool:
    return os.uname().machine == arch.name


def inputs(arch: ArchProfile) -> dict:
    kpkg, kver = resolve_kernel_package(arch)
    scripts = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(HERE.iterdir())}
    version = _pkg_version if native(arch) else (lambda p: package_version(p, arch))
    return {
        "builder": BUILDER_VERSION,
        "arch": arch.name,
        "kernel": [kpkg, kver],
        "packages": {p: version(p) for p in ["busybox-static", *GUEST_PROGRAMS, *GUEST_DATA]},
        "initrd_modules": INITRD_MODULES,
        "guest_modules": GUEST_MODULES,
        "scripts": scripts,
        "root_size": ROOT_SIZE,
    }


def digest_of(inp: dict) -> str:
    return hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]


def default_image(cache_dir: Path, arch: ArchProfile, log=print) -> GuestImage:
    """Return the cached default image, building it first when its inputs changed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    inp = inputs(arch)
    digest = digest_of(inp)
    final = cache_dir / f"guest-{arch.name}-{digest}"
    image = GuestImage(root=final / "root.qcow2", kernel=final / "kernel",
                       initrd=final / "initrd.img", digest=digest, console_tty=arch.console_tty)
    with open(cache_dir / f".guest-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if _complete(final):
            os.utime(final / "manifest.json")        # most recently used
            return image
    with open(cache_dir / f".guest-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final):
            return image
        if final.exists():
            log(f"guest image {final.name} is incomplete or corrupted; rebuilding it")
            shutil.rmtree(final)
        log(f"building guest image {final.name} (kernel {inp['kernel'][0]} {inp['kernel'][1]})")
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache_dir))
        try:
            _build(tmp, inp, arch)
            files = {f: sha256_file(tmp / f) for f in IMAGE_FILES}
            (tmp / "manifest.json").write_text(json.dumps({"digest": digest, "files": files, "inputs": inp}, indent=1))
            os.chmod(tmp, 0o755)     # QEMU runs as another user and must reach the files
            os.rename(tmp, final)
        except OSError as e:
            raise ImageError(f"building the guest image in {cache_dir} failed: {e.strerror or e} "
                             f"({'free some space there, or set [host] work_dir elsewhere' if e.errno == 28 else 'see above'})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    prune(cache_dir, arch, keep=3, log=log)
    return image


IMAGE_FILES = ("kernel", "initrd.img", "root.qcow2")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prune(cache_dir: Path, arch: ArchProfile, keep: int = 3, log=print) -> None:
    """Keep the `keep` most recently used images of an arch; drop older ones no run holds."""
    prune_lru((d for d in cache_dir.glob(f"guest-{arch.name}-*") if d.is_dir()), keep, "manifest.json",
              lambda d: cache_dir / f".guest-{d.name.rsplit('-', 1)[1]}.lock", "guest image", log)


def prune_lru(entries, keep: int, stamp: str, lock_of, what: str, log=print) -> None:
    """Of cache entries (directories), keep the `keep` whose `stamp` file was touched last;
    remove the others unless a process holds the entry's lock file (`lock_of(entry)`)."""
    entries = sorted(entries, key=lambda d: (d / stamp).stat().st_mtime if (d / stamp).exists() else 0, reverse=True)
    for d in entries[keep:]:
        with open(lock_of(d), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            shutil.rmtree(d, ignore_errors=True)
            log(f"pruned old {what} {d.name}")


def _complete(d: Path, files=IMAGE_FILES) -> bool:
    """The entry (<name>-<digest>) is whole: its manifest names it and every file has the
    hash it was built with."""
    try:
        m = json.loads((d / "manifest.json").read_text())
        return m["digest"] == d.name.rsplit("-", 1)[1] and all(sha256_file(d / f) == m["files"][f] for f in files)
    except (OSError, ValueError, KeyError, IndexError):
        return False


def _build(out: Path, inp: dict, arch: ArchProfile) -> None:
    work = out / "work"
    kernel = _unpack_kernel(work, inp["kernel"])
    _install_kernel(next((kernel.root / "boot").glob("vmlinuz-*")), out / "kernel", arch)
    stage = None if native(arch) else _stage(["busybox-static", *GUEST_PROGRAMS, *GUEST_DATA], arch, work)
    busybox = Path("/bin/busybox") if stage is None else _resolve_in(stage, "/bin/busybox")
    if stage is not None and inp["packages"]["busybox-static"] != _pkg_version("busybox-static"):
        raise ImageError("the host's busybox-static (its applet list names the guest's links) differs in version "
                         f"from the {arch.deb_arch} one; upgrade the host's busybox-static")
    _initramfs(work / "initrd", busybox, kernel, out / "initrd.img")
    root = work / "root"
    _busybox_tree(root, busybox)
    kernel.copy_modules(GUEST_MODULES, root)
    programs = [f for files in [*GUEST_PROGRAMS.values(), *GUEST_DATA.values()] for f in files]
    if stage is None:
        for f in programs:
            _copy_with_libs(Path(f), root, arch)
    else:
        _copy_staged(stage, programs, root, arch)
    _root_etc(root, inp)
    raw = work / "root.raw"
    _run(["mkfs.ext4", "-q", "-F", "-L", "accroot", "-E", "root_owner=0:0", "-d", str(root), str(raw), ROOT_SIZE])
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out / "root.qcow2")])
    shutil.rmtree(work)
    for f in out.iterdir():
        os.chmod(f, 0o644)


@dataclass
class _Kernel:
    """The guest kernel package unpacked: its tree, release and module dependencies."""
    root: Path
    release: str
    deps: dict
    builtin: str

    def copy_modules(self, wanted, dest: Path) -> None:
        _copy_modules(self.root, self.release, self.deps, self.builtin, wanted, dest)


def _unpack_kernel(work: Path, pkg: tuple) -> _Kernel:
    kpkg, kver = pkg
    debs = work / "debs"
    debs.mkdir(parents=True)
    _run(["apt-get", "download", f"{kpkg}={kver}"], cwd=debs)
    kroot = work / "kernel"
    deb = next(debs.glob("*.deb"))
    _run(["dpkg-deb", "-x", str(deb), str(kroot)])
    kdirs = list((kroot / "lib/modules").iterdir())
    if len(kdirs) != 1:
        raise ImageError(f"unexpected module trees in {deb.name}: {kdirs}")
    krel = kdirs[0].name
    _run(["depmod", "-b", str(kroot), krel])
    return _Kernel(kroot, krel, _parse_modules_dep(kroot / "lib/modules" / krel / "modules.dep"),
                   (kroot / "lib/modules" / krel / "modules.builtin").read_text())


def _initramfs(ird: Path, busybox: Path, kernel: _Kernel, out: Path) -> None:
    _busybox_tree(ird, busybox)
    kernel.copy_modules(INITRD_MODULES, ird)
    (ird / "etc").mkdir(exist_ok=True)
    (ird / "etc/initrd-modules").write_text("\n".join(INITRD_MODULES) + "\n")
    shutil.copy(HERE / "initramfs-init", ird / "init")
    os.chmod(ird / "init", 0o755)
    _cpio_gz(ird, out)


def _root_etc(root: Path, inp: dict) -> None:
    """The root file system's /etc, its empty directories and its fixed SSH host key."""
    etc = root / "etc"
    (etc / "init.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "rcS", etc / "init.d/rcS")
    os.chmod(etc / "init.d/rcS", 0o755)
    shutil.copy(HERE / "inittab", etc / "inittab")
    shutil.copy(HERE / "profile", etc / "profile")
    (etc / "guest-modules").write_text("\n".join(GUEST_MODULES) + "\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "shells").write_text("/bin/sh\n")
    (etc / "acc-image").write_text(json.dumps(inp, sort_keys=True) + "\n")
    for d in ("root", "proc", "sys", "dev", "tmp", "run", "mnt", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "root", 0o700)
    # A fixed host key made at build time: generating one at first login costs
    # about a second under TCG, and these guests are throwaway test machines.
    (etc / "dropbear").mkdir(exist_ok=True)
    _run(["dropbearkey", "-t", "ed25519", "-f", str(etc / "dropbear/dropbear_ed25519_host_key")])


def _install_kernel(vmlinuz: Path, dst: Path, arch: ArchProfile) -> None:
    """On x86_64, boot the uncompressed ELF through its PVH entry: it skips the
    firmware's loader and the in-guest XZ decompression (3 s -> 0.3 s to the
    kernel's first line under TCG).  Elsewhere, or if that is impossible, the
    compressed kernel as shipped."""
    data = vmlinuz.read_bytes()
    if arch.name == "x86_64":
        at = data.find(b"\xfd7zXZ\x00")
        if at >= 0:
            try:
                elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
            except lzma.LZMAError:
                elf = b""
            if elf.startswith(b"\x7fELF") and _has_pvh_note(elf):
                dst.write_bytes(elf)
                return
    dst.write_bytes(data)


def _has_pvh_note(elf: bytes) -> bool:
    """True when a 64-bit little-endian ELF has the XEN_ELFNOTE_PHYS32_ENTRY note (type 18)."""
    if elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:        # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _cpio_gz(tree: Path, dst: Path) -> None:
    """`find . | cpio -o -H newc | gzip` in `tree`, with argument lists only (no shell)."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=("\n".join(names) + "\n").encode(),
                          capture_output=True)
    if cpio.returncode != 0:
        raise ImageError(f"cpio failed: {cpio.stderr.decode(errors='replace')[-400:]}")
    import gzip
    with gzip.open(dst, "wb", compresslevel=1) as f:
        f.write(cpio.stdout)


def _busybox_tree(tree: Path, busybox: Path = Path("/bin/busybox")) -> None:
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox, tree / "bin/busybox")
    applets = _run(["/bin/busybox", "--list-full"]).stdout.split()
    for a in applets:
        p = tree / a
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() and not p.is_symlink():
            p.symlink_to("/bin/busybox")


def _parse_modules_dep(path: Path) -> dict[str, tuple[str, list[str]]]:
    """module name -> (relative path, [relative paths of dependencies])."""
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        name = Path(mod).name.split(".")[0].replace("-", "_")
        out[name] = (mod, rest.split())
    return out


def _copy_modules(kroot: Path, krel: str, deps, builtin: str, names, tree: Path) -> None:
    mdir = kroot / "lib/modules" / krel
    builtin_names = {Path(l).name.split(".")[0].replace("-", "_") for l in builtin.split()}
    wanted = set()
    for n in names:
        key = n.replace("-", "_")
        if key in builtin_names:
            continue
        if key not in deps:
            if n in OPTIONAL_MODULES:
                continue           # not on this architecture (uhci_hcd on arm64); the guest lives without it
            raise ImageError(f"kernel {krel} has no module {n!r}")
        path, dl = deps[key]
        wanted.add(path)
        wanted.update(dl)
    for rel in wanted:
        dst = tree / "lib/modules" / krel / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mdir / rel, dst)
    for f in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (mdir / f).exists():
            shutil.copy(mdir / f, tree / "lib/modules" / krel / f)
    _run(["depmod", "-b", str(tree), krel])


def _copy_with_libs(path: Path, tree: Path, arch: ArchProfile) -> None:
    if not path.exists():
        raise ImageError(f"{path} is missing on this host; run the lab setup (./harness setup)")
    _copy_file(path, tree)
    if path.suffix in (".ids",):
        return
    out = _run(["ldd", str(path)]).stdout
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line)
        if m:
            _copy_file(Path(m.group(1)), tree)


def _copy_file(src: Path, tree: Path) -> None:
    dst = tree / str(src).lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    shutil.copy2(os.path.realpath(src), dst)


# ---------------------------------------------------------------- packages of the guest's architecture

def _deb_arch_suffix(arch: ArchProfile) -> str:
    return f":{arch.deb_arch}"


def _qualified(pkg: str, arch: ArchProfile) -> str:
    """pkg:arch, or plain pkg for an Architecture: all package."""
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", pkg], capture_output=True, text=True)
    return pkg if re.search(r"^Architecture: all$", r.stdout, re.M) else pkg + _deb_arch_suffix(arch)


def package_version(pkg: str, arch: ArchProfile) -> str:
    show = subprocess.run(["apt-cache", "show", "--no-all-versions", _qualified(pkg, arch)],
                          capture_output=True, text=True).stdout
    m = re.search(r"^Version: (\S+)", show, re.M)
    if not m:
        raise ImageError(f"no {arch.deb_arch} package {pkg!r} in apt's lists; run 'apt-get update' "
                         f"(and 'dpkg --add-architecture {arch.deb_arch}' for a foreign guest)")
    return m.group(1)


def _closure(pkgs: list[str], arch: ArchProfile) -> list[str]:
    """The packages and their (pre-)dependencies, for the guest's architecture."""
    out = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                "--no-breaks", "--no-replaces", "--no-enhances", *[_qualified(p, arch) for p in pkgs]]).stdout
    names = set()
    for line in out.splitlines():
        if not line.startswith(" ") and not line.startswith("<"):
            names.add(line.strip())
    keep = []
    for n in sorted(names):
        base, _, a = n.partition(":")
        if a and a not in (arch.deb_arch, "all"):
            continue
        keep.append(f"{base}:{a}" if a and a != "all" else _qualified(base, arch))
    return keep


def _stage(pkgs: list[str], arch: ArchProfile, work: Path) -> Path:
    """Download the packages with their dependency closure and unpack them all into one tree."""
    debs = work / "debs-stage"
    debs.mkdir(parents=True)
    wanted = _closure(pkgs, arch)
    r = subprocess.run(["apt-get", "download", *wanted], cwd=debs, capture_output=True, text=True)
    if r.returncode != 0:
        # virtual or arch-less names: retry one by one, keeping what exists
        for w in wanted:
            subprocess.run(["apt-get", "download", w], cwd=debs, capture_output=True, text=True)
    stage = work / "stage"
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(stage)])
    return stage


def _needed(elf: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _copy_staged(stage: Path, files: list[str], tree: Path, arch: ArchProfile) -> None:
    lib_dirs = [arch.lib_dir, "/usr" + arch.lib_dir, "/lib", "/usr/lib"]
    todo, done = list(files), set()
    while todo:
        f = todo.pop()
        if f in done:
            continue
        done.add(f)
        real = _resolve_in(stage, f)
        if not real.exists():     # merged /usr on the host, not yet in every package
            alt = f[len("/usr"):] if f.startswith("/usr/") else "/usr" + f
            real = _resolve_in(stage, alt)
        if not real.exists():
            raise ImageError(f"{f} is not in the {arch.deb_arch} packages staged for the guest")
        _copy_file_as(real, tree / f.lstrip("/"))
        if f.endswith(".ids"):
            continue
        for lib in _needed(real):
            for d in lib_dirs:
                if (stage / d.lstrip("/") / lib).exists():
                    todo.append(f"{d}/{lib}")
                    break
            else:
                raise ImageError(f"{f} needs {lib}, which no staged {arch.deb_arch} package provides")
    _copy_file_as(_resolve_in(stage, arch.ld_so), tree / arch.ld_so.lstrip("/"))


def _resolve_in(stage: Path, path: str) -> Path:
    """Follow symlinks (absolute ones too) without leaving the staged tree."""
    p = stage / path.lstrip("/")
    for _ in range(40):
        if not p.is_symlink():
            return p
        t = os.readlink(p)
        p = stage / t.lstrip("/") if t.startswith("/") else p.parent / t
    raise ImageError(f"symlink loop at {path} in the staged packages")


def _copy_file_as(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    shutil.copy2(src, dst)


# ---------------------------------------------------------------- overlays, seeds

def create_overlay(host, base, path):
    """A qcow2 overlay on the lab host on a cached base image: per-VM writes never touch the base."""
    host.makedirs(path.parent)
    host.run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path))
    return path


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a file the user gave, remembered by its identity (device, inode, size,
    mtime) in `cache_dir`, so a multi-GiB image is read once, not at every run."""
    st = path.stat()
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    memo = cache_dir / "user-image-hashes.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(str(path), {}).get("ident") == ident:
        return known[str(path)]["sha256"]
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ImageError(f"guest image {path}: cannot be read on this machine ({e.strerror}); fix: make it "
                         f"readable by the user running the harness, or name another [guest] image") from None
    known[str(path)] = {"ident": ident, "sha256": h.hexdigest()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    tmp.replace(memo)
    return h.hexdigest()


def user_image(path: Path, cache_dir: Path, access: str, console_tty: str, log=print) -> GuestImage:
    """The user's own image on this machine, named by its content (copied to a lab host
    under that name, so a second run, or another config naming the same file, copies nothing)."""
    if not path.is_file():
        raise ImageError(f"guest image {path} does not exist on this machine; fix: copy it there, or name an "
                         f"image already on the lab host as image = 'lab-host:/path'")
    digest = "user-" + file_sha256(path, cache_dir)[:16]
    return GuestImage(root=path, digest=digest, access=access, console_tty=console_tty)


def on_lab_host(host, path: str, access: str, console_tty: str) -> GuestImage:
    """An image the lab config names as already on the lab host: used in place (every VM's
    overlay is backed by it, so nothing writes it), identified by its size and mtime."""
    try:
        st = host.run("stat", "-L", "-c", "%s %Y %F", path, check=False)
    except OSError as e:
        raise ImageError(f"lab host {host.name}: cannot check guest image {path}: {e}") from None
    if not st.ok or "regular" not in st.stdout:
        raise ImageError(f"lab host {host.name} has no guest image at {path} ({(st.stderr or st.stdout).strip()}); "
                         f"fix: copy it there, or name an image on this machine ([guest] image = '/path', "
                         f"copied to the lab host by the harness)")
    size, mtime = st.stdout.split()[:2]
    return GuestImage(root=LabPath(path), digest=f"lab-host {path} ({size} bytes, mtime {mtime})", access=access,
                      console_tty=console_tty)


def upload(img: GuestImage, host, cache_dir, log=print) -> GuestImage:
    """The image on the lab host, in its images dir there (content-addressed by the
    image's digest; copied once, atomically, with progress for a large one; this
    machine links the cached files).  An interrupted copy leaves no entry: the
    `.complete` mark is written last, and every file arrives under a temporary name."""
    d = cache_dir / f"guest-{img.digest}"
    if not host.exists(d / ".complete"):
        host.makedirs(d)
        for f in (img.root, img.kernel, img.initrd):
            if f is not None:
                size = f.stat().st_size
                progress = None
                if not host.local and size >= 64 << 20:
                    log(f"copying guest image {f} ({size >> 20} MiB) to lab host {host.name}:{d}")
                    progress = _progress_logger(f.name, size, log)
                try:
                    host.put(f, d / f.name, progress=progress, readonly=True)
                except OSError as e:
                    raise ImageError(f"copying guest image {f} to lab host {host.name}:{d / f.name} failed: "
                                     f"{e}; fix: free space in the lab host's work_dir or check its "
                                     f"permissions") from None
        host.write_text(d / ".complete", img.digest + "\n")
    return GuestImage(root=d / img.root.name, kernel=d / img.kernel.name if img.kernel else None,
                      initrd=d / img.initrd.name if img.initrd else None, digest=img.digest, access=img.access,
                      console_tty=img.console_tty, firmware=img.firmware)


def _progress_logger(name: str, total: int, log):
    """An SFTP progress callback that logs every further 10 %."""
    seen = {"step": 0}

    def cb(done: int, _total: int) -> None:
        step = done * 10 // max(total, 1)
        if step > seen["step"]:
            seen["step"] = step
            log(f"  {name}: {step * 10} % ({done >> 20} of {total >> 20} MiB)")
    return cb


def create_nocloud_seed(path: Path, instance_id: str, hostname: str, pubkey: str,
                        password_hash: str | None = None) -> Path:
    """A NoCloud seed (iso9660, volume id 'cidata') that gives the run's SSH key to root,
    and with `password_hash` (a crypt hash, never clear text) root's console password."""
    with tempfile.TemporaryDirectory() as d:
        Path(d, "meta-data").write_text(f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
        Path(d, "user-data").write_text(
            "#cloud-config\n"
            "disable_root: false\n"
            "ssh_pwauth: false\n"
            "ssh_authorized_keys:\n"
            f"  - {pubkey}\n"
            "users:\n"
            "  - name: root\n"
            "    ssh_authorized_keys:\n"
            f"      - {pubkey}\n"
            + (f"chpasswd:\n  expire: false\n  list:\n    - root:{password_hash}\n" if password_hash else "")
        )
        _run(["genisoimage", "-quiet", "-output", str(path), "-volid", "cidata", "-joliet", "-rock",
              str(Path(d, "user-data")), str(Path(d, "meta-data"))])
    os.chmod(path, 0o644)
    return path


def create_image(host, path, size: str = "64M", fmt: str = "qcow2"):
    """An empty image on the lab host."""
    host.makedirs(path.parent)
    host.run("qemu-img", "create", "-q", "-f", fmt, str(path), size)
    return path


def image_sha256(host, path, mib: int, fmt: str = "qcow2") -> str:
    """sha256 of the first `mib` MiB of an image's guest-visible content, read
    on the lab host while a VM may hold it (shared read)."""
    raw = f"{path}.sha-{os.getpid()}.raw"
    try:
        host.run("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), raw)
        out = host.run("sh", "-c", 'head -c "$1" "$2" | sha256sum', "sh", mib * 1024 * 1024, raw).stdout
    finally:
        host.run("rm", "-f", raw, check=False)
    return out.split()[0]


def image_info(host, path) -> dict:
    """`qemu-img info` of an image on the lab host, also while a VM holds it."""
    return json.loads(host.run("qemu-img", "info", "-U", "--output=json", str(path)).stdout)
