"""Loop devices over files in the harness's work dir: a real block device for
claims about block-device disks.  Always detached on exit; a dead run's loop
devices are detached by the sweeper (their backing file is under its run dir)."""
from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from pathlib import Path
from .errors import LabError


class LoopError(LabError, RuntimeError):
    pass


def attach(backing: Path, runner=subprocess.run) -> str:
    r = runner(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if r.returncode != 0:
        raise LoopError(f"cannot attach a loop device to {backing}: {r.stderr.strip()} (does the host kernel have loop?)")
    return r.stdout.strip()


def detach(dev: str, runner=subprocess.run) -> None:
    runner(["losetup", "-d", dev], capture_output=True, text=True)


def list_loops(runner=subprocess.run) -> list[tuple[str, str]]:
    """(device, backing file) for every attached loop device."""
    r = runner(["losetup", "-J", "-l"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return []
    return [(d["name"], (d.get("back-file") or "").removesuffix(" (deleted)"))
            for d in json.loads(r.stdout).get("loopdevices", [])]


@contextmanager
def loop_device(backing: Path):
    dev = attach(backing)
    try:
        yield dev
    finally:
        detach(dev)
