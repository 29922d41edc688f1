"""[shell] reaches the lab host the way OpenSSH (and libvirt's qemu+ssh) would: a Host alias
of the user's ssh config gives HostName, Port, User, IdentityFile, UserKnownHostsFile and
ProxyJump; what the lab config sets itself wins."""
from lab import config
from lab.hostexec import resolve_ssh

SSH_CONFIG = """
Host kunpeng1
    HostName 10.20.30.41
    User labadmin
    Port 2222
    IdentityFile ~/.ssh/lab_ed25519
    UserKnownHostsFile /etc/lab/known_hosts
    ProxyJump bastion

Host direct
    HostName direct.lab.example

Host *
    ServerAliveInterval 30
"""


def test_an_alias_resolves_as_openssh_does(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(SSH_CONFIG)
    t = resolve_ssh("kunpeng1", None, None, "", "")
    assert (t.hostname, t.port, t.user) == ("10.20.30.41", 2222, "labadmin")
    assert t.key_file == str(tmp_path / ".ssh" / "lab_ed25519") and t.known_hosts == "/etc/lab/known_hosts"
    assert t.proxy_command == "ssh -W 10.20.30.41:2222 bastion", "ProxyJump goes through OpenSSH's own ssh -W"
    d = resolve_ssh("direct", None, None, "", "")
    assert (d.hostname, d.port, d.user, d.proxy_command) == ("direct.lab.example", 22, "root", "")


def test_what_the_lab_config_sets_wins(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(SSH_CONFIG)
    t = resolve_ssh("kunpeng1", 22, "root", "/keys/k", "/kh", str(cfg))
    assert (t.port, t.user, t.key_file, t.known_hosts) == (22, "root", "/keys/k", "/kh")
    assert t.proxy_command == f"ssh -F {cfg} -W 10.20.30.41:22 bastion"


def test_a_two_hop_jump_chains_through_openssh(tmp_path):
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host far\n    HostName 192.0.2.1\n    ProxyJump gw1,gw2\n")
    assert resolve_ssh("far", None, None, "", "", str(cfg)).proxy_command == \
        f"ssh -F {cfg} -W 192.0.2.1:22 -J gw2 gw1"


def test_the_lab_config_leaves_unset_shell_keys_to_the_ssh_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(SSH_CONFIG)
    p = tmp_path / "lab.toml"
    p.write_text('[host]\nname = "kp1"\nlibvirt_uri = "qemu+ssh://kunpeng1/system"\nvirt_type = "kvm"\n'
                 '[shell]\naddress = "kunpeng1"\n')
    h = config.load(p).host()
    assert (h.address, h.port, h.user, h.proxy_command) == ("10.20.30.41", 2222, "labadmin",
                                                            "ssh -W 10.20.30.41:2222 bastion")
    p.write_text(p.read_text() + 'user = "root"\nport = 22\n')
    h = config.load(p).host()
    assert (h.port, h.user) == (22, "root")
