"""A lab's own QEMU, built from a vendor's source: openEuler's QEMU (its disk I/O
suspension `retry` patches) from a source tarball or a git checkout.

x86_64 system emulator only, offline (meson's subproject wraps are never
fetched), installed under the lab's work dir (never over the system QEMU),
cached by the hash of its inputs: the source (the tarball's sha256, or a
checkout's commit and local changes), this recipe and the build toolchain's
Debian package versions.  A second run with the same inputs costs a hash.

Two build-only adjustments, because a `git archive` tarball lacks QEMU's
submodules (both outside the emulator's device and block code):
- `subprojects/keycodemapdb` (keyboard maps for the UIs) is replaced by a
  stand-in that generates empty maps: no UI is built, and nothing in the suites
  types on a virtual keyboard (the serial console is a chardev);
- `tests/fp` (QEMU's own soft-float tests, which need berkeley-softfloat-3) is
  left out.
`build-info.json` in the install records both, with the source and its hash.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .images import prune_lru, sha256_file as _sha256_file
from .errors import LabError

RECIPE_VERSION = "1"
TARGET = "x86_64-softmmu"
BINARY = "qemu-system-x86_64"
CONFIGURE_ARGS = [
    f"--target-list={TARGET}", "--without-default-features", "--disable-download",
    "--enable-kvm", "--enable-tcg", "--enable-slirp", "--enable-linux-aio",
    "--enable-vhost-kernel", "--enable-vhost-net", "--enable-vhost-user",
    "--disable-docs", "--disable-werror", "--disable-debug-info",
]
# Debian packages the build needs (the vendor README's list); their versions are inputs.
BUILD_PACKAGES = ["gcc", "make", "ninja-build", "python3-venv", "pkg-config", "flex", "bison", "xz-utils",
                  "libglib2.0-dev", "libpixman-1-dev", "libslirp-dev", "libaio-dev", "libfdt-dev"]
# The openEuler feature this build exists for: its device properties.
RETRY_PROPERTIES = ("retry_interval", "retry_timeout")

_KEYMAP_STUB = {
    "README": "Stand-in for QEMU's keycodemapdb subproject (absent from a git-archive tarball): empty keymaps.\n",
    "meson.build": "project('keycodemapdb', meson_version: '>=0.63.0')\n"
                   "keymaps_csv = files('data/keymaps.csv')\n"
                   "keymap_gen = find_program('tools/keymap-gen')\n",
    "data/keymaps.csv": "Linux,Qcode\n",
    "tools/keymap-gen": "#!/usr/bin/env python3\n"
                        "# keymap-gen code-map --lang glib2 --varname NAME CSV FROM TO: an empty map NAME\n"
                        "import sys\n"
                        "name = sys.argv[sys.argv.index('--varname') + 1]\n"
                        "print(f'const guint16 {name}[] = {{ 0 }};\\nconst guint {name}_len = 0;')\n",
}
_FP_TESTS_SKIPPED = "# left out by the harness: needs the berkeley-softfloat-3/testfloat-3 subprojects\nsubdir_done()\n"


class QemuBuildError(LabError):
    """The QEMU source or its build is unusable: a lab problem, said in one line with the fix."""


@dataclass(frozen=True)
class QemuBuild:
    prefix: Path
    info: dict

    @property
    def emulator(self) -> Path:
        return self.prefix / "bin" / BINARY

    def describe(self) -> str:
        i = self.info
        return (f"{i['vendor']} QEMU {i['version']} built by the harness from {i['source']} "
                f"({i['source_id']}), {TARGET}")


# ------------------------------------------------------------------ inputs

def source_id(source: Path, expect_sha256: str = "") -> str:
    """See _source_id; the same unchanged source is hashed once per process."""
    try:
        st = source.stat()
    except OSError:
        return _source_id(source, expect_sha256)
    if source.is_dir():                   # a checkout changes without its directory's mtime
        return _source_id(source, expect_sha256)
    return _cached_source_id(str(source), st.st_mtime_ns, st.st_size, expect_sha256)


@functools.lru_cache(maxsize=8)
def _cached_source_id(source: str, _mtime_ns: int, _size: int, expect_sha256: str) -> str:
    return _source_id(Path(source), expect_sha256)


def _source_id(source: Path, expect_sha256: str = "") -> str:
    """What identifies the source: `sha256:<hex>` of a tarball, `git:<commit>[+<diff hash>]`
    of a checkout.  A missing or unusable source is one clear error."""
    if not source.exists():
        raise QemuBuildError(f"QEMU source {source} does not exist; fix: name openEuler's QEMU source tarball "
                             f"(for example ../shared/vendor/qemu-openeuler-*.tar.xz) or a git checkout of it")
    if source.is_dir():
        if not (source / ".git").exists():
            raise QemuBuildError(f"QEMU source {source} is a directory but not a git checkout; fix: name a source "
                                 f"tarball or a git checkout (with .git)")
        if expect_sha256:
            raise QemuBuildError(f"qemu.source_sha256 pins a tarball, but {source} is a git checkout; fix: drop "
                                 f"source_sha256 or name the tarball")
        git = ["git", "-C", str(source)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode != 0:
            raise QemuBuildError(f"QEMU source {source}: git rev-parse HEAD failed: {head.stderr.strip()}")
        diff = subprocess.run([*git, "diff", "HEAD"], capture_output=True).stdout
        return f"git:{head.stdout.strip()}" + (f"+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else "")
    if not tarfile.is_tarfile(source):
        raise QemuBuildError(f"QEMU source {source} is not a tar archive; fix: name the source tarball "
                             f"(.tar.xz/.tar.gz) or a git checkout")
    digest = _sha256_file(source)
    if expect_sha256 and digest != expect_sha256.lower():
        raise QemuBuildError(f"QEMU source {source} has sha256 {digest}, but qemu.source_sha256 pins "
                             f"{expect_sha256}; fix: use the pinned tarball or update the pin")
    return f"sha256:{digest}"


@functools.lru_cache(maxsize=1)
def _toolchain() -> tuple:
    return tuple(sorted(_pkg_versions(BUILD_PACKAGES).items()))


def _pkg_versions(packages) -> dict:
    out = {}
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", p], capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout:
            raise QemuBuildError(f"the QEMU build needs Debian package {p!r}; fix: run the lab setup "
                                 f"(./harness setup installs {' '.join(packages)})")
        out[p] = r.stdout
    return out


def inputs(source: Path, expect_sha256: str = "") -> dict:
    return {
        "recipe": RECIPE_VERSION,
        "source_id": source_id(source, expect_sha256),
        "configure": CONFIGURE_ARGS,
        "adjustments": hashlib.sha256(json.dumps([_KEYMAP_STUB, _FP_TESTS_SKIPPED]).encode()).hexdigest()[:16],
        "toolchain": dict(_toolchain()),
    }


def key_of(inp: dict) -> str:
    return hashlib.sha256(json.dumps(inp, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the cache

def ensure(source: Path, cache_dir: Path, expect_sha256: str = "", log=print) -> QemuBuild:
    """The cached build of `source`, built first when its inputs changed."""
    source = source.resolve()
    inp = inputs(source, expect_sha256)
    key = key_of(inp)
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cache_dir, 0o755)
    final = cache_dir / f"qemu-{key}"
    with open(cache_dir / f".qemu-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # a second worker waits for the first one's build
        hit = _complete(final)
        if hit is not None:
            os.utime(final / "build-info.json")
            return hit
        if final.exists():
            log(f"QEMU build {final.name} is incomplete; building it again")
            shutil.rmtree(final)
        for stale in cache_dir.glob(f".build-{final.name}-*"):      # a killed build's tree (we hold its lock)
            log(f"removing {stale.name}, left by a build that did not finish")
            shutil.rmtree(stale, ignore_errors=True)
        built = _build(source, inp, final, log)
    prune(cache_dir, keep=2, log=log)
    return built


def _complete(d: Path) -> QemuBuild | None:
    try:
        info = json.loads((d / "build-info.json").read_text())
        b = QemuBuild(d, info)
        return b if _sha256_file(b.emulator) == info["emulator_sha256"] else None
    except (OSError, ValueError, KeyError):
        return None


def prune(cache_dir: Path, keep: int = 2, log=print) -> None:
    """Keep the `keep` most recently used builds; a build another process holds stays."""
    prune_lru((d for d in cache_dir.glob("qemu-*") if d.is_dir()), keep, "build-info.json",
              lambda d: cache_dir / f".{d.name}.lock", "QEMU build", log)


# ------------------------------------------------------------------ the build

def _build(source: Path, inp: dict, final: Path, log) -> QemuBuild:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".build-{final.name}-", dir=final.parent))
    try:
        log(f"building QEMU from {source.name} ({inp['source_id'][:23]}...) into {final}")
        src = _unpack(source, work)
        _check_tree(src, source)
        _adjust(src)
        build = work / "build"
        build.mkdir()
        _step(["bash", str(src / "configure"), f"--prefix={final}", *CONFIGURE_ARGS], build, work / "configure.log",
              "configure", log)
        _ninja(build, work / "build.log", log)
        dest = work / "destdir"
        _step(["ninja", "install"], build, work / "install.log", "ninja install", log,
              env={**os.environ, "DESTDIR": str(dest)})
        staged = dest / str(final).lstrip("/")
        emulator = staged / "bin" / BINARY
        version = _version(emulator)
        seconds = round(time.monotonic() - t0, 1)
        info = {
            "vendor": "openEuler" if "openeuler" in source.name.lower() else "vendor",
            "version": version, "source": source.name, "source_path": str(source),
            "source_id": inp["source_id"], "key": final.name.split("-", 1)[1], "inputs": inp,
            "build_seconds": seconds, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "emulator_sha256": _sha256_file(emulator),
            "adjustments": ["subprojects/keycodemapdb: stand-in with empty keymaps (no UI is built)",
                            "tests/fp: QEMU's soft-float tests left out (berkeley-softfloat-3 is not in the source)"],
        }
        (staged / "build-info.json").write_text(json.dumps(info, indent=1))
        for root, dirs, _files in os.walk(staged):        # QEMU runs as libvirt's QEMU user
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.chmod(staged, 0o755)
        os.rename(staged, final)
        log(f"built {info['vendor']} QEMU {version} in {seconds:.0f} s: {final / 'bin' / BINARY}")
        return QemuBuild(final, info)
    except OSError as e:
        raise QemuBuildError(f"building QEMU in {final.parent} failed: {e.strerror or e}"
                             + ("; fix: free some space there, or set [host] work_dir elsewhere"
                                if e.errno == 28 else "")) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack(source: Path, work: Path) -> Path:
    src = work / "src"
    if source.is_dir():
        # the checkout as committed plus its local changes, never the checkout itself
        r = subprocess.run(f"git -C {_q(source)} ls-files -z | (cd {_q(source)} && cpio -0 -pdm --quiet {_q(src)})",
                           shell=True, capture_output=True, text=True)
        if r.returncode != 0:
            raise QemuBuildError(f"copying the git checkout {source} failed: {r.stderr.strip()[-300:]}")
        return src
    src.mkdir()
    r = subprocess.run(["tar", "-xf", str(source), "-C", str(src), "--no-same-owner"], capture_output=True, text=True)
    if r.returncode != 0:
        raise QemuBuildError(f"QEMU source {source} could not be unpacked ({r.stderr.strip()[-300:]}); fix: fetch the "
                             f"tarball again (compare its sha256 with the vendor's)")
    tops = [p for p in src.iterdir()]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else src


def _q(p) -> str:
    return shlex.quote(str(p))


def _check_tree(src: Path, source: Path) -> None:
    for f in ("configure", "meson.build", "VERSION", "include/hw/block/block.h"):
        if not (src / f).is_file():
            raise QemuBuildError(f"{source} is not a QEMU source tree (no {f}); fix: name QEMU's source tarball "
                                 f"or checkout")
    block_h = (src / "include/hw/block/block.h").read_text(errors="replace")
    missing = [p for p in RETRY_PROPERTIES if p not in block_h]
    if missing:
        raise QemuBuildError(f"{source} is QEMU {(src / 'VERSION').read_text().strip()} without openEuler's disk I/O "
                             f"suspension patches (no {', '.join(missing)} in include/hw/block/block.h); fix: use "
                             f"openEuler's QEMU source")


def _adjust(src: Path) -> None:
    kc = src / "subprojects" / "keycodemapdb"
    if not (kc / "README").exists():
        for rel, text in _KEYMAP_STUB.items():
            (kc / rel).parent.mkdir(parents=True, exist_ok=True)
            (kc / rel).write_text(text)
        os.chmod(kc / "tools" / "keymap-gen", 0o755)
    fp = src / "tests" / "fp" / "meson.build"
    if fp.exists() and not (src / "subprojects" / "berkeley-softfloat-3" / "meson.build").exists():
        fp.write_text(_FP_TESTS_SKIPPED)


def _step(argv, cwd: Path, logfile: Path, what: str, log, env=None) -> None:
    t = time.monotonic()
    with open(logfile, "w") as out:
        r = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-15:]
        raise QemuBuildError(f"QEMU build step '{what}' failed (exit {r.returncode}): " + " | ".join(tail)[-1500:])
    log(f"  {what}: {time.monotonic() - t:.0f} s")


_PROGRESS = re.compile(rb"^\[(\d+)/(\d+)\]")


def _ninja(build: Path, logfile: Path, log) -> None:
    """ninja for the emulator, its progress said every 10 % (and its time at the end)."""
    t = time.monotonic()
    shown = -1
    with open(logfile, "wb") as out:
        p = subprocess.Popen(["ninja", BINARY], cwd=build, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in p.stdout:
            out.write(line)
            m = _PROGRESS.match(line)
            if m:
                done, total = int(m.group(1)), int(m.group(2))
                tenth = done * 10 // total
                if tenth > shown:
                    shown = tenth
                    log(f"  compiling {BINARY}: {done}/{total} ({done * 100 // total} %), "
                        f"{time.monotonic() - t:.0f} s")
        rc = p.wait()
    if rc != 0:
        tail = logfile.read_text(errors="replace").strip().splitlines()[-15:]
        raise QemuBuildError(f"QEMU build step 'ninja {BINARY}' failed (exit {rc}): " + " | ".join(tail)[-1500:])


def _version(emulator: Path) -> str:
    r = subprocess.run([str(emulator), "--version"], capture_output=True, text=True)
    m = re.search(r"version (\S+)", r.stdout)
    if r.returncode != 0 or not m:
        raise QemuBuildError(f"the built {emulator} does not run: {(r.stderr or r.stdout).strip()[-300:]}")
    return m.group(1)


# ------------------------------------------------------------------ a lab's emulator

def builds_dir() -> Path:
    """Where this machine keeps its QEMU builds, for every lab that names a source (the
    build is the same for all: its key is the hash of its inputs, not of the lab):
    /var/lib/acc-harness/qemu, or $ACC_QEMU_BUILDS."""
    return Path(os.environ.get("ACC_QEMU_BUILDS") or "/var/lib/acc-harness/qemu")


def for_lab(cfg, build: bool = True, log=print) -> QemuBuild | None:
    """The lab's QEMU build ([qemu] source), built first when `build` (else None while
    it is not built yet); None for a lab without a source."""
    if not cfg.qemu_source:
        return None
    cache = builds_dir()
    if build:
        return ensure(Path(cfg.qemu_source), cache, cfg.qemu_source_sha256, log=log)
    return _complete(cache / f"qemu-{key_of(inputs(Path(cfg.qemu_source), cfg.qemu_source_sha256))}")


def emulator_of(cfg, host, build: bool = True, log=print) -> str:
    """The QEMU binary the lab's domains use, as a path on the lab host `host`: [qemu]
    emulator, the lab's build (copied to a remote lab host first), or "" (libvirt's
    default for the architecture)."""
    if cfg.emulator:
        return cfg.emulator
    b = for_lab(cfg, build=build, log=log)
    if b is None and cfg.qemu_source:
        raise QemuBuildError(f"lab host {cfg.name}'s QEMU ({Path(cfg.qemu_source).name}) is not built yet; fix: "
                             f"run the lab setup (./harness setup, or python -m lab --lab {cfg.path} qemu)")
    if b is None:
        return ""
    if host.local:
        return str(b.emulator)
    return install_on(b, host, cfg.host_work_dir / "qemu", log=log)


# ------------------------------------------------------------------ on a remote lab host

def install_on(b: QemuBuild, host, cache_dir, log=print) -> str:
    """The build on a remote lab host, in its work dir there (qemu-<key>/, the same name
    as here: the key is the hash of the build's inputs): copied once as one compressed
    archive, unpacked beside, and renamed into place whole, so an interrupted copy or a
    second controller copying at the same time never leaves a half install under that
    name.  QEMU finds its firmware relative to its binary, so the prefix may move.  The
    binary must run there (the same distribution's libraries as this machine): checked
    at once, and a failure names the missing libraries and the fix."""
    final = cache_dir / b.prefix.name
    mark = b.info["emulator_sha256"]
    try:
        have = host.read_text(final / ".complete").strip() if host.exists(final / ".complete") else ""
    except OSError:
        have = ""
    if have != mark:
        if have:
            raise QemuBuildError(f"lab host {host.name} holds a different QEMU build under {final} (its emulator "
                                 f"sha256 {have[:16]}..., this machine's {mark[:16]}...); fix: remove {final} there")
        _copy(b, host, cache_dir, final, mark, log)
    emulator = final / "bin" / BINARY
    _runs_on(host, emulator, b)
    return str(emulator)


def _copy(b: QemuBuild, host, cache_dir, final, mark: str, log) -> None:
    t0 = time.monotonic()
    host.makedirs(cache_dir)
    with tempfile.TemporaryDirectory(prefix=".upload-", dir=b.prefix.parent) as tmp:
        tar = Path(tmp) / f"{b.prefix.name}.tar.gz"
        with tarfile.open(tar, "w:gz", compresslevel=1) as t:
            t.add(b.prefix, arcname=".")
        remote_tar = cache_dir / f".{b.prefix.name}.tar.gz.{os.getpid()}-{os.urandom(3).hex()}"
        log(f"copying QEMU build {b.prefix.name} ({tar.stat().st_size >> 20} MiB packed) to lab host "
            f"{host.name}:{final}")
        try:
            host.put(tar, remote_tar)
        except OSError as e:
            raise QemuBuildError(f"copying QEMU build {b.prefix.name} to lab host {host.name}:{cache_dir} failed: "
                                 f"{e}; fix: free space in the lab host's work_dir or check its permissions") from None
    # unpacked under a temporary name, marked complete, then renamed whole; a rename onto an
    # existing install (another controller's, the same build) fails and this copy goes
    script = ('set -e; t=$(mktemp -d "$1/.install-XXXXXX"); trap \'rm -rf "$t" "$2"\' EXIT; '
              'tar -xzf "$2" -C "$t"; chmod 755 "$t"; printf "%s\\n" "$4" > "$t/.complete"; '
              'mv -T "$t" "$3" 2>/dev/null || test -e "$3/.complete"')
    r = host.run("sh", "-c", script, "sh", str(cache_dir), str(remote_tar), str(final), mark, check=False, timeout=600)
    if not r.ok:
        raise QemuBuildError(f"unpacking QEMU build {b.prefix.name} on lab host {host.name} in {cache_dir} failed: "
                             f"{(r.stderr or r.stdout).strip()[-300:]}; fix: free space there or check its permissions")
    log(f"QEMU build {b.prefix.name} is on lab host {host.name} ({time.monotonic() - t0:.1f} s)")


def _runs_on(host, emulator, b: QemuBuild) -> None:
    r = host.run(str(emulator), "--version", check=False, timeout=60)
    if r.ok and b.info["version"] in r.stdout:
        return
    missing = host.run("sh", "-c", 'ldd "$1" 2>&1 | grep "not found" || true', "sh", str(emulator),
                       check=False, timeout=60).stdout.split()
    libs = [w for w in missing if ".so" in w]
    why = (f"it lacks {', '.join(libs)}" if libs else (r.stderr or r.stdout).strip()[-300:] or f"exit {r.rc}")
    raise QemuBuildError(f"the QEMU built on this machine ({b.describe()}) does not run on lab host {host.name} "
                         f"({emulator}): {why}; fix: give the lab host the libraries it was built against (this "
                         f"machine's distribution; on Debian 12 the runtime packages of {', '.join(BUILD_PACKAGES[-5:])}), "
                         f"or build QEMU there yourself and set [qemu] emulator to its path")
