"""The lab-host executor: LocalHost for real, and HostPath standing in for
pathlib.Path in the sysfs code (discovery and host-state restore give the same
answers through it as through Path, on the recorded sysfs tree).  SshHost is
exercised end to end by the nested lab (`./harness nested`)."""

import pytest

from tests.fakehost import FakeHost
from lab import config, hostexec, pci
from lab.hostexec import HostCommandFailed, HostPath, LabPath, LocalHost
from tests.test_pci_logic import sys_tree  # noqa: F401  (fixture)


def test_local_run_quotes_arguments_and_reports_failures(tmp_path):
    h = LocalHost("here")
    r = h.run("printf", "%s|", "a b", "$HOME", "'q'")
    assert r.ok and r.stdout == "a b|$HOME|'q'|", "each argument arrives as one word, nothing expanded"
    assert h.run("sh", "-c", "cat", input="in put").stdout == "in put"
    bad = h.run("sh", "-c", "echo oops >&2; exit 3", check=False)
    assert bad.rc == 3 and bad.stderr.strip() == "oops"
    with pytest.raises(HostCommandFailed, match=r"lab host here command \"sh -c 'echo oops >&2; exit 3'\" exited 3: oops"):
        bad.check()
    assert h.run("no-such-program-acc", check=False).rc == 127


def test_local_file_operations(tmp_path):
    h = LocalHost()
    top = LabPath(tmp_path)
    d = top / "a" / "b"
    h.makedirs(d)
    h.write_text(d / "f", "x\n")
    h.symlink(d / "f", d / "l")
    assert h.read_text(d / "f") == "x\n" and h.readlink(d / "l") == str(d / "f")
    assert h.listdir(d) == ["f", "l"] and h.exists(d / "l") and h.is_dir(d)
    with pytest.raises(FileNotFoundError):
        h.read_bytes(d / "missing")
    h.rmtree(top / "a")
    assert not h.exists(top / "a")


def test_a_controller_path_is_refused_by_every_host():
    """A pathlib.Path is this machine's: handed to a lab host (even a local one) it is refused."""
    from pathlib import Path
    for op in (lambda h: h.exists(Path("/tmp")), lambda h: h.makedirs(Path("/tmp/x")),
               lambda h: h.put(Path("/etc/hostname"), Path("/tmp/y")), lambda h: h.rmtree(Path("/tmp/a/b/c"))):
        with pytest.raises(hostexec.ControllerPathGiven, match="path on this machine"):
            op(LocalHost())
    assert LocalHost().exists(LabPath("/tmp")) and LocalHost().exists("/tmp")


def test_rmtree_refuses_top_level_directories():
    class Fake(hostexec.Host):
        name = "fake"

        def run(self, *argv, **kw):
            raise AssertionError(f"must not run {argv}")
    for p in ("/", "/var", "/var/lib"):
        with pytest.raises(ValueError, match="refusing"):
            Fake().rmtree(p)


def test_host_path_gives_the_same_discovery_as_path(sys_tree):  # noqa: F811
    via = HostPath(LocalHost(), sys_tree)
    assert [d for d in pci.discover(via)] == pci.discover(sys_tree)
    assert pci.hpre_devices(via)[0]["bdf"] == pci.hpre_devices(sys_tree)[0]["bdf"] == "0000:79:00.0"
    assert pci.iommu_group_members(5, via) == pci.iommu_group_members(5, sys_tree)
    with pytest.raises(pci.UnsafeDevice, match="shares IOMMU group 5 with unlisted 0000:04:10.1"):
        pci.check_passthrough_safe("0000:04:10.0", {"0000:04:10.0"}, via)


def test_host_state_writes_through_the_host_path(sys_tree):  # noqa: F811
    """set_numvfs and restore write sysfs through the executor's path type."""
    writes = []
    via = HostPath(LocalHost(), sys_tree)
    st = pci.HostState(via, host=FakeHost(lambda argv, input: (1, "")),
                       writer=lambda p, v: writes.append((type(p).__name__, str(p), v)))
    st.set_numvfs("0000:03:00.0", 4)
    assert writes == [("HostPath", f"{sys_tree}/bus/pci/devices/0000:03:00.0/sriov_numvfs", "0"),
                      ("HostPath", f"{sys_tree}/bus/pci/devices/0000:03:00.0/sriov_numvfs", "4")]
    real = pci.HostState(via, host=LocalHost())
    real._write(f"{sys_tree}/bus/pci/devices/0000:03:00.0/sriov_numvfs", "5")    # a string path: wrapped
    assert (sys_tree / "bus/pci/devices/0000:03:00.0/sriov_numvfs").read_text() == "5"


def test_shell_config_picks_the_executor(tmp_path):
    base = ('[host]\nname = "h"\nlibvirt_uri = "{uri}"\nwork_dir = "/var/lib/acc-x"\n{shell}')
    local = tmp_path / "l.toml"
    local.write_text(base.format(uri="qemu:///system", shell=""))
    cfg = config.load(local)
    assert cfg.on_this_machine and isinstance(cfg.host(), LocalHost) and cfg.host_work_dir == cfg.work_dir
    remote = tmp_path / "r.toml"
    remote.write_text(base.format(uri="qemu+ssh://root@lab1/system", shell=""))
    with pytest.raises(config.LabConfigError, match=r"key 'host.libvirt_uri'.*\[shell\] address"):
        config.load(remote)              # a remote URI without [shell]: refused, never this machine
    remote.write_text(base.format(uri="qemu+libssh://root@lab1/system",
                                  shell='[shell]\naddress = "lab1"\nkey_file = "/k"\nwork_dir = "/srv/acc"\n'))
    cfg = config.load(remote)
    h = cfg.host()
    assert isinstance(h, hostexec.SshHost) and (h.address, h.port, h.key_file) == ("lab1", 22, "/k")
    assert str(cfg.host_work_dir) == "/srv/acc" and str(cfg.work_dir) == "/var/lib/acc-x"
    remote.write_text(base.format(uri="qemu+ssh://root@lab1/system", shell='[shell]\nkey_file = "k"\n'))
    with pytest.raises(config.LabConfigError, match=r"key 'shell.key_file' has value 'k' that must be an absolute path"):
        config.load(remote)
