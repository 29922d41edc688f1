"""A vhost-scsi LUN through the kernel's LIO target (configfs), for DISK-3 on
lab hosts that have `vhost_scsi`: a fileio backstore over an image file, a
vhost WWPN with one TPG and LUN 0, given to a VM as
`<hostdev mode='subsystem' type='scsi_host'><source protocol='vhost' wwpn=.../>`.
Everything made is removed in reverse order on exit, also after a failure."""
from __future__ import annotations

import secrets
from pathlib import Path

from . import xml as X
from .errors import LabError

class LioMissing(LabError):
    """The lab host's kernel has no LIO target (configfs): a lab problem."""


class ConfigFS:
    """The few configfs operations LIO needs (a seam for unit tests); `root`: the lab
    host's configfs target directory (`lab.sys / "kernel/config/target"`)."""

    def __init__(self, root):
        self.root = root

    def mkdir(self, rel: str) -> None:
        (self.root / rel).mkdir(parents=True)

    def write(self, rel: str, value: str) -> None:
        (self.root / rel).write_text(value)

    def symlink(self, target_rel: str, link_rel: str) -> None:
        (self.root / link_rel).symlink_to(self.root / target_rel)

    def unlink(self, rel: str) -> None:
        (self.root / rel).unlink()

    def rmdir(self, rel: str) -> None:
        (self.root / rel).rmdir()

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()


def new_wwpn() -> str:
    return "naa.5001405" + secrets.token_hex(5)[:9]


class VhostScsiTarget:
    def __init__(self, backing: Path, size_bytes: int, *, fs: ConfigFS, name: str | None = None):
        self.fs = fs
        self.backing, self.size = backing, size_bytes
        self.name = name or f"acc_{secrets.token_hex(4)}"
        self.hba = f"core/fileio_{int(secrets.token_hex(2), 16)}"
        self.wwpn = new_wwpn()
        self.nexus = new_wwpn()
        self._undo: list = []

    def _do(self, fn, *args, undo=None):
        fn(*args)
        if undo:
            self._undo.append(undo)

    def create(self) -> "VhostScsiTarget":
        if not self.fs.exists("vhost") and not self.fs.exists(""):
            raise LioMissing("LIO configfs is not mounted (no vhost_scsi / target_core_mod)")
        store = f"{self.hba}/{self.name}"
        tpg = f"vhost/{self.wwpn}/tpgt_1"
        try:
            self._do(self.fs.mkdir, store, undo=lambda: (self.fs.rmdir(store), self.fs.rmdir(self.hba)))
            self.fs.write(f"{store}/control", f"fd_dev_name={self.backing},fd_dev_size={self.size}")
            self.fs.write(f"{store}/enable", "1")
            self._do(self.fs.mkdir, tpg, undo=lambda: (self.fs.rmdir(tpg), self.fs.rmdir(f"vhost/{self.wwpn}")))
            self._do(self.fs.mkdir, f"{tpg}/lun/lun_0", undo=lambda: self.fs.rmdir(f"{tpg}/lun/lun_0"))
            self._do(self.fs.symlink, store, f"{tpg}/lun/lun_0/{self.name}",
                     undo=lambda: self.fs.unlink(f"{tpg}/lun/lun_0/{self.name}"))
            self.fs.write(f"{tpg}/nexus", self.nexus)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> list[str]:
        errors = []
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except OSError as e:
                errors.append(str(e))
        return errors

    def hostdev(self):
        return X.el("hostdev", {"mode": "subsystem", "type": "scsi_host"},
                    X.el("source", {"protocol": "vhost", "wwpn": self.wwpn}))

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.remove()
