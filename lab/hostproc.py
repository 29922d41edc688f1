"""What a QEMU process really does on the host, read from /proc (local lab
hosts): which files it holds open and with which flags, whether it set up
Linux native AIO; and what the kernel has (device-mapper)."""
from __future__ import annotations

import os
from pathlib import Path

O_DIRECT = 0o40000 if os.uname().machine in ("x86_64", "i686") else 0o200000


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


def open_flags(pid: int, path: Path) -> list[int]:
    """The open flags of every descriptor of `pid` that refers to `path`."""
    target = os.path.realpath(path)
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != target:
                continue
            for line in Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().splitlines():
                if line.startswith("flags:"):
                    out.append(int(line.split()[1], 8))
        except OSError:
            continue
    return out


def aio_rings(pid: int) -> int:
    """Linux AIO contexts (io_setup) show up as '/[aio]' mappings."""
    return sum(1 for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "[aio]" in line)


def kernel_has_device_mapper(proc_misc: Path = Path("/proc/misc"), text: str | None = None) -> bool:
    """Asked of the kernel: libdevmapper (run by libvirt, for one) creates
    /dev/mapper/control even where the kernel has no device-mapper."""
    try:
        text = proc_misc.read_text() if text is None else text
    except OSError:
        return False
    return any(line.split()[-1] == "device-mapper" for line in text.splitlines() if line.split())
