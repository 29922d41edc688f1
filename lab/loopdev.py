"""Loop devices over files in the harness's work dir on the lab host: a real block
device for claims about block-device disks.  Always detached on exit; a dead run's
loop devices are detached by the sweeper (their backing file is under its run dir).
Every command runs through the lab host's `Host`."""
from __future__ import annotations

import json
from contextlib import contextmanager

from .errors import LabError


class LoopError(LabError):
    pass


def attach(host, backing) -> str:
    r = host.run("losetup", "-f", "--show", str(backing), check=False)
    if not r.ok:
        raise LoopError(f"cannot attach a loop device to {backing} on {host.name}: {r.stderr.strip()} "
                        f"(does the host kernel have loop?)")
    return r.stdout.strip()


def detach(host, dev: str) -> None:
    host.run("losetup", "-d", dev, check=False)


def list_loops(host) -> list[tuple[str, str]]:
    """(device, backing file) for every attached loop device of the lab host."""
    r = host.run("losetup", "-J", "-l", check=False)
    if not r.ok or not r.stdout.strip():
        return []
    return [(d["name"], (d.get("back-file") or "").removesuffix(" (deleted)"))
            for d in json.loads(r.stdout).get("loopdevices", [])]


@contextmanager
def loop_device(host, backing):
    dev = attach(host, backing)
    try:
        yield dev
    finally:
        detach(host, dev)
