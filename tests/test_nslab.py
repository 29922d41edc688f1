"""The namespace lab host (lab/nslab): a remote lab host whose files the controller
cannot see, and that sees none of the controller's; stopped with everything in it."""
import os
from pathlib import Path

import pytest

from lab import nslab
from lab.timeouts import Deadline, poll

pytestmark = pytest.mark.lab

PORT = 22781            # not labs/nslab.toml's: the suites' lab host may be up meanwhile


@pytest.fixture(scope="module")
def ns_host():
    lay = nslab.Layout(Path("/var/lib/acc-lab/nslab-selftest"))
    repo = str(Path(__file__).resolve().parents[1])
    m = nslab.start(lay, PORT, ["/var/lib/acc-harness", repo], log=lambda s: None)
    host = lay.shell("nslab-selftest", PORT)
    try:
        yield lay, m, host, repo
    finally:
        host.close()
        nslab.stop(lay, log=lambda s: None)


def test_the_lab_host_and_the_controller_see_each_others_files_nowhere(ns_host):
    lay, _, host, repo = ns_host
    host.run("sh", "-c", "echo on-the-lab-host > /srv/acc-harness-probe")
    assert not os.path.exists("/srv/acc-harness-probe"), "the lab host's work dir is visible on the controller"
    assert (lay.store / "work" / "acc-harness-probe").exists(), "the lab host's disk is its store"
    (lay.store / "work" / "acc-harness-probe").unlink()
    for d in ("/var/lib/acc-harness", repo):
        # hidden under an empty mount, or absent: a clone under /tmp lies in the lab host's own /tmp
        assert not host.exists(d) or host.listdir(d) == [], f"the controller's {d} is visible on the lab host"
    assert not host.exists(str(lay.dir)), "the lab's own dir (keys, store) is visible on the lab host"
    assert host.run("sh", "-c", "touch /var/lib/acc-harness/x", check=False).rc != 0, "hidden dirs are read-only"


def test_the_lab_host_has_its_own_network_processes_and_libvirt(ns_host):
    _, m, host, _ = ns_host
    links = host.run("ip", "-o", "link").stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links
    assert not host.exists(f"/proc/{os.getpid()}/cmdline") or \
        host.read_text(f"/proc/{os.getpid()}/cmdline") != Path(f"/proc/{os.getpid()}/cmdline").read_text(), \
        "the lab host sees the controller's processes"
    assert host.run("virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout.strip() == ""
    assert host.exists("/run/libvirt/libvirt-sock") and not os.path.exists("/run/acc-lab-host")


def test_stop_ends_every_process_of_the_lab_host_and_start_sweeps_a_crashed_one(ns_host):
    lay, m, host, repo = ns_host
    # a second start finds the first still running (as after a crashed run) and stops it first
    first = nslab.running_pid(lay)
    host.close()
    m2 = nslab.start(lay, PORT, ["/var/lib/acc-harness", repo], log=lambda s: None)
    assert nslab.running_pid(lay) == m2.pid != first and not os.path.exists(f"/proc/{first}")
    children = [int(c) for c in Path(f"/proc/{m2.pid}/task/{m2.pid}/children").read_text().split()]
    nslab.stop(lay, log=lambda s: None)
    poll(lambda: not any(os.path.exists(f"/proc/{c}") for c in children),
         Deadline(10, "the lab host's first process to be gone", scaled=False), interval=0.1)
    assert nslab.running_pid(lay) is None and not lay.state.exists()
    nslab.start(lay, PORT, ["/var/lib/acc-harness", repo], log=lambda s: None)      # for the fixture's stop


def test_the_lab_hosts_shell_goes_through_an_openssh_alias_and_proxyjump(ns_host, tmp_path):
    """[shell] address = an alias of the user's ssh config that reaches the lab host only
    through a jump host (here: the lab host itself, whose sshd is on its own 127.0.0.1:22):
    HostName, Port, User, IdentityFile, UserKnownHostsFile and ProxyJump as OpenSSH takes them."""
    from lab.hostexec import SshHost
    lay, _, _, _ = ns_host
    kind, blob = lay.host_key.with_suffix(".pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{PORT} {kind} {blob}\n127.0.0.1 {kind} {blob}\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host acc-jump\n  HostName 127.0.0.1\n  Port {PORT}\n  User root\n  IdentityFile {lay.key}\n"
                   f"  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
                   f"Host acc-behind\n  HostName 127.0.0.1\n  Port 22\n  User root\n  IdentityFile {lay.key}\n"
                   f"  UserKnownHostsFile {kh}\n  ProxyJump acc-jump\n")
    h = SshHost("behind", "acc-behind", None, None, ssh_config=str(cfg))
    try:
        assert h.proxy_command.startswith(f"ssh -F {cfg} -W 127.0.0.1:22 acc-jump")
        r = h.run("sh", "-c", "echo $SSH_CONNECTION")
        # the session arrived at the lab host's own sshd from its own loopback: through the jump
        assert r.stdout.split()[2:] == ["127.0.0.1", "22"], r.stdout
        assert h.exists("/srv"), "SFTP through the jump"
    finally:
        h.close()


def test_two_copies_of_one_image_at_once_both_land_whole(ns_host, tmp_path):
    """Two xdist workers copying the same image to the lab host at the same time (CI failed
    with 'mv -f ...root.qcow2.part ...' when both used one temporary name)."""
    import threading
    from lab.hostexec import LabPath
    lay, _, _, _ = ns_host
    src = tmp_path / "img"
    src.write_bytes(os.urandom(8 << 20))
    hosts = [lay.shell(f"w{i}", PORT) for i in range(2)]
    errors = []

    def copy(h):
        try:
            h.makedirs(LabPath("/srv/acc-put-race"))
            h.put(src, LabPath("/srv/acc-put-race/img"))
        except Exception as e:          # noqa: BLE001 - collected for the assertion
            errors.append(e)
    ts = [threading.Thread(target=copy, args=(h,)) for h in hosts]
    [t.start() for t in ts]
    [t.join(120) for t in ts]
    try:
        assert not errors, errors
        assert hosts[0].run("sha256sum", "/srv/acc-put-race/img").stdout.split()[0] == \
            __import__("hashlib").sha256(src.read_bytes()).hexdigest()
        assert hosts[0].listdir(LabPath("/srv/acc-put-race")) == ["img"], "a temporary copy was left behind"
    finally:
        hosts[0].run("rm", "-rf", "/srv/acc-put-race", check=False)
        [h.close() for h in hosts]
