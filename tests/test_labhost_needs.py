"""doctor's lab-host check: every program the harness runs there, and on a remote lab host
the sshd features it uses, each missing one named with its packages and what it costs."""
import paramiko

from lab import labhost_needs
from lab.hostexec import LocalHost
from lab.result import Result


class Fake(LocalHost):
    def __init__(self, missing=(), local=True, sftp=True, forward="ok"):
        super().__init__("oe1")
        self.missing, self.local, self.sftp_ok, self.forward = set(missing), local, sftp, forward

    def run(self, *argv, check=True, timeout=None):
        assert argv[:2] == ("sh", "-c")
        progs = argv[2].split("for t in ")[1].split(";")[0].split()
        out = "".join(f"{p} {'no' if p in self.missing else 'yes'}\n" for p in progs)
        return Result("lab host oe1", " ".join(argv[:2]), 0, out, "")

    def listdir(self, path):
        if not self.sftp_ok:
            raise paramiko.SSHException("Channel closed.")
        return []

    def connect_tcp(self, address, port, timeout=5):
        if self.forward == "prohibited":
            raise ConnectionRefusedError(f"{address}:{port} on lab host oe1: ChannelException(1, 'Administratively prohibited')")
        if self.forward == "nothing listens":
            raise ConnectionRefusedError(f"{address}:{port} on lab host oe1: ChannelException(2, 'Connect failed')")
        return open("/dev/null")


def test_a_missing_program_is_named_with_both_packages_and_what_it_costs():
    lines = dict((l.split()[0], (ok, l)) for ok, l in labhost_needs.check(Fake(missing={"nbdkit", "ovs-vsctl"})))
    assert lines["qemu-img"][0] and lines["dmsetup"][0]
    ok, line = lines["nbdkit"]
    assert not ok and "openEuler/RPM: nbdkit" in line and "IOS-4" in line
    ok, line = lines["ovs-vsctl"]
    assert not ok and "openEuler/RPM: openvswitch; Debian: openvswitch-switch" in line and "NIC-5, NIC-8" in line


def test_a_remote_lab_hosts_sshd_must_give_sftp_and_forwarding():
    assert all(ok for ok, _ in labhost_needs.check(Fake(local=False, forward="nothing listens"))), \
        "a forward to a closed port is a forwarding sshd"
    bad = [l for ok, l in labhost_needs.check(Fake(local=False, sftp=False, forward="prohibited")) if not ok]
    assert any(l.startswith("sshd sftp REFUSED") and "Subsystem sftp" in l for l in bad), bad
    assert any(l.startswith("sshd tcp-forwarding REFUSED") and "AllowTcpForwarding" in l for l in bad), bad
    assert not any(l.startswith("sshd") for _, l in labhost_needs.check(Fake(local=True))), "no sshd on this machine"


def test_this_machine_has_what_the_local_lab_needs_for_its_claims():
    have = {l.split()[0]: ok for ok, l in labhost_needs.check(LocalHost("local"))}
    assert have["qemu-img"] and have["ip"] and have["nbdkit"] and have["sh"]
