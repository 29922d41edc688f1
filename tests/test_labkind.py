"""The controller's set-up by lab kind: a remote lab needs no apt, no daemon, no root;
a missing prerequisite is one line naming the fix on Debian/Ubuntu and on openEuler/RPM."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LABKIND = REPO / "lab" / "labkind.py"

REMOTE = """
[host]
name = "kunpeng1"
libvirt_uri = "qemu+ssh://root@kunpeng1/system"
virt_type = "kvm"
arch = "aarch64"
[shell]
address = "kunpeng1"
[guest]
image = "{image}"
access = "{access}"
"""


def kind(path: Path) -> list[str]:
    out = subprocess.run([sys.executable, str(LABKIND), str(path)], capture_output=True, text=True, check=True)
    return out.stdout.rstrip("\n").split("\t")


def test_a_lab_of_ssh_hosts_with_the_users_own_image_is_remote(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text(REMOTE.format(image="/images/openEuler-24.03-aarch64.qcow2", access="console-password"))
    assert kind(p) == ["remote", "ssh"]
    p.write_text(REMOTE.format(image="lab-host:/images/oe.qcow2", access="nocloud"))
    assert kind(p) == ["remote", "ssh genisoimage"], "a NoCloud seed is made on the controller"


@pytest.mark.parametrize("text, why", [
    (REMOTE.format(image="default", access="cmdline"), "built here from Debian packages"),
    (REMOTE.format(image="/i.qcow2", access="nocloud") + '[qemu]\nsource = "q.tar.xz"\n', "QEMU is built here"),
    ('[host]\nname = "local"\nlibvirt_uri = "qemu:///system"\n[guest]\nimage = "/i.qcow2"\n', "is this machine"),
])
def test_what_needs_this_machines_set_up_says_why(tmp_path, text, why):
    p = tmp_path / "k.toml"
    p.write_text(text)
    k = kind(p)
    assert k[0] == "local" and why in k[1], k


def test_a_fleet_is_remote_only_when_every_host_is(tmp_path):
    (tmp_path / "a.toml").write_text(REMOTE.format(image="/i.qcow2", access="console-password"))
    (tmp_path / "b.toml").write_text(REMOTE.format(image="/i.qcow2", access="console-password")
                                     .replace("kunpeng1", "kunpeng2"))
    (tmp_path / "fleet.toml").write_text('[[hosts]]\ninclude = "a.toml"\n[[hosts]]\ninclude = "b.toml"\n')
    assert kind(tmp_path / "fleet.toml")[0] == "remote"
    (tmp_path / "b.toml").write_text((tmp_path / "b.toml").read_text().replace('"/i.qcow2"', '"default"'))
    assert kind(tmp_path / "fleet.toml")[0] == "local"


def test_the_shipped_configs_are_the_kind_their_labs_are():
    assert kind(REPO / "labs" / "local.toml")[0] == "local"
    assert kind(REPO / "labs" / "example-kvm-host.toml")[0] in ("local", "remote")


def test_a_remote_controller_without_apt_dpkg_or_ssh_is_told_the_fix_for_both_distributions(tmp_path):
    """./harness setup on a remote lab with a PATH that has no apt, dpkg or ssh: no apt call,
    no root needed, one line naming the missing program and both fixes, exit 2."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for f in Path(d).glob("*"):
            n = f.name
            if n in ("ssh", "apt", "apt-get", "dpkg", "dpkg-query") or (bin_ / n).exists():
                continue
            if os.access(f, os.X_OK):
                (bin_ / n).symlink_to(f)
    (bin_ / "python3").unlink(missing_ok=True)
    (bin_ / "python3").symlink_to(sys.executable)
    lab = tmp_path / "k.toml"
    lab.write_text(REMOTE.format(image="/images/oe.qcow2", access="console-password"))
    r = subprocess.run([str(REPO / "harness"), "setup"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PATH=str(bin_), ACC_LAB=str(lab)))
    assert r.returncode == 2, r.stderr
    assert "missing on this controller: OpenSSH's ssh" in r.stderr
    assert "Debian/Ubuntu: apt-get install openssh-client; openEuler/RPM: dnf install openssh-clients" in r.stderr
    assert "installing Debian packages" not in r.stderr and "libvirtd" not in r.stderr
