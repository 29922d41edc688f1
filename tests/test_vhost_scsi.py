"""The LIO/vhost-scsi target logic, against a recording configfs (this host has
no vhost_scsi; real lab hosts run DISK-3 in suites/test_disks.py)."""
from pathlib import Path

import pytest

from lab.vhost_scsi import VhostScsiTarget


class FakeConfigFS:
    def __init__(self, fail_on=None):
        self.ops, self.dirs, self.links, self.files, self.fail_on = [], set(), {}, {}, fail_on

    def _op(self, *op):
        if self.fail_on and op[0] == self.fail_on[0] and self.fail_on[1] in op[1]:
            raise OSError(f"injected failure on {op}")
        self.ops.append(op)

    def mkdir(self, rel):
        self._op("mkdir", rel)
        self.dirs.add(rel)          # parents are implied, as configfs default groups are

    def write(self, rel, value):
        self._op("write", rel, value)
        self.files[rel] = value

    def symlink(self, target, link):
        self._op("symlink", target, link)
        self.links[link] = target

    def unlink(self, rel):
        self._op("unlink", rel)
        del self.links[rel]

    def rmdir(self, rel):
        self._op("rmdir", rel)
        assert not any(d.startswith(rel + "/") for d in self.dirs), f"rmdir {rel} with children"
        assert not any(l.startswith(rel + "/") for l in self.links), f"rmdir {rel} with links"
        self.dirs.discard(rel)

    def exists(self, rel):
        return True


def test_target_is_built_and_removed_completely():
    fs = FakeConfigFS()
    t = VhostScsiTarget(Path("/work/lun.img"), 64 << 20, fs=fs, name="acc_x")
    with t:
        store = f"{t.hba}/acc_x"
        assert fs.files[f"{store}/control"] == "fd_dev_name=/work/lun.img,fd_dev_size=67108864"
        assert fs.files[f"{store}/enable"] == "1"
        assert fs.links[f"vhost/{t.wwpn}/tpgt_1/lun/lun_0/acc_x"] == store
        assert fs.files[f"vhost/{t.wwpn}/tpgt_1/nexus"].startswith("naa.")
        xml = t.hostdev()
        assert xml.get("type") == "scsi_host" and xml.find("source").get("wwpn") == t.wwpn
        assert xml.find("source").get("protocol") == "vhost"
    assert not fs.links
    assert not [d for d in fs.dirs if d.startswith(("vhost/", "core/"))], fs.dirs


def test_a_failed_step_undoes_what_was_made():
    fs = FakeConfigFS(fail_on=("symlink", "core/"))
    t = VhostScsiTarget(Path("/work/lun.img"), 1 << 20, fs=fs, name="acc_y")
    with pytest.raises(OSError, match="injected"):
        t.create()
    assert not [d for d in fs.dirs if d.startswith(("vhost/", "core/"))], fs.dirs
