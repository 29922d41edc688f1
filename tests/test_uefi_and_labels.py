"""UEFI guests (issue 29 item 3) and files handed to QEMU's user (item 4), without a lab:
the domain XML, the config, the disk layout, the emulated build's binfmt rule and
libvirt's word on QEMU's identity."""
import struct

import pytest

from lab import cloud_image, config, debroot
from lab import hostfacts
from lab import xml as X
from lab.arch import ARCHES
from lab.errors import LabError
from tests.fakehost import FakeHost

# libvirt 9.0 on Debian 12 (virsh capabilities), and a libvirt with SELinux as on openEuler
DEBIAN_CAPS = """<capabilities><host><uuid>x</uuid><cpu><arch>x86_64</arch><model>Broadwell</model></cpu>
<secmodel><model>none</model><doi>0</doi></secmodel>
<secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+994</baselabel>
<baselabel type='qemu'>+64055:+994</baselabel></secmodel></host></capabilities>"""
OPENEULER_CAPS = """<capabilities><host><uuid>x</uuid><cpu><arch>aarch64</arch><model>host</model></cpu>
<secmodel><model>selinux</model><doi>0</doi><baselabel type='kvm'>system_u:system_r:svirt_t:s0</baselabel>
<baselabel type='qemu'>system_u:system_r:svirt_tcg_t:s0</baselabel></secmodel>
<secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+107:+107</baselabel>
<baselabel type='qemu'>+107:+107</baselabel></secmodel></host></capabilities>"""


def test_qemu_user_is_libvirts_dac_label_and_its_security_driver():
    d = hostfacts.qemu_user(DEBIAN_CAPS, "qemu")
    assert (d.uid, d.gid, d.selinux, d.apparmor) == (64055, 994, False, False)
    o = hostfacts.qemu_user(OPENEULER_CAPS, "kvm")
    assert (o.uid, o.gid, o.selinux) == (107, 107, True)
    assert "SELinux" in o.describe()
    root = hostfacts.qemu_user("<capabilities><host/></capabilities>", "kvm")
    assert (root.uid, root.gid) == (0, 0), "no DAC model: QEMU runs as root"


def test_a_granted_file_is_qemus_own_with_mode_0600_and_an_svirt_label_under_selinux():
    h = FakeHost()
    hostfacts.grant_to_qemu(h, "/w/faults/nbd.sock", hostfacts.qemu_user(OPENEULER_CAPS, "kvm"))
    assert [c[0] for c in h.calls] == [["chown", "107:107", "/w/faults/nbd.sock"],
                                       ["chmod", "0600", "/w/faults/nbd.sock"],
                                       ["chcon", "-t", "svirt_image_t", "/w/faults/nbd.sock"]]
    h = FakeHost()
    hostfacts.grant_to_qemu(h, "/dev/mapper/acc-x", hostfacts.qemu_user(DEBIAN_CAPS, "qemu"))
    assert [c[0][0] for c in h.calls] == ["chown", "chmod"], "no SELinux: no label"
    assert not any("0666" in a for c in h.calls for a in c[0]), "never world-writable"


def test_a_failed_grant_is_a_lab_problem_naming_the_file():
    h = FakeHost(lambda argv, input: (1, "", "chown: Operation not permitted"))
    with pytest.raises(LabError, match="/w/x.sock.*Operation not permitted|Operation not permitted.*/w/x.sock") as e:
        hostfacts.grant_to_qemu(h, "/w/x.sock", hostfacts.qemu_user(DEBIAN_CAPS, "qemu"))
    assert not isinstance(e.value, AssertionError)


def test_efi_domain_asks_libvirt_for_uefi_without_secure_boot():
    dom = X.domain("d", virt_type="qemu", arch=ARCHES["aarch64"], firmware="efi")
    os_el = dom.find("os")
    assert os_el.get("firmware") == "efi"
    feats = {f.get("name"): f.get("enabled") for f in os_el.findall("firmware/feature")}
    assert feats == {"secure-boot": "no", "enrolled-keys": "no"}
    assert [c.tag for c in os_el] == ["type", "firmware", "boot"], "libvirt's schema order"
    bios = X.domain("d", virt_type="qemu", arch=ARCHES["x86_64"])
    assert bios.find("os").get("firmware") is None and bios.find("os/firmware") is None
    kernel = X.domain("d", virt_type="qemu", arch=ARCHES["aarch64"], kernel="/k", firmware="efi")
    assert kernel.find("os").get("firmware") is None, "a direct kernel boot needs no firmware selection"


def test_config_firmware_key(tmp_path):
    base = "[host]\nname='h'\nlibvirt_uri='qemu:///system'\narch='{arch}'\n[guest]\nfirmware='{fw}'\n"
    p = tmp_path / "l.toml"
    p.write_text(base.format(arch="aarch64", fw="efi"))
    assert config.load(p).firmware == "efi"
    p.write_text(base.format(arch="aarch64", fw="bios"))
    with pytest.raises(config.LabConfigError, match="guest.firmware.*no BIOS.*efi"):
        config.load(p)
    p.write_text(base.format(arch="x86_64", fw="uefi"))
    with pytest.raises(config.LabConfigError, match="guest.firmware"):
        config.load(p)


def test_uefi_disk_has_an_efi_system_partition_then_a_bootable_root():
    m = cloud_image.mbr_table(0xabcdef01, [(0xEF, 2048, 131072), (0x83, 133120, 4000000)], boot=1)
    assert len(m) == 512 and m[510:] == b"\x55\xaa"
    e1, e2 = m[446:462], m[462:478]
    assert (e1[0], e1[4], *struct.unpack_from("<II", e1, 8)) == (0, 0xEF, 2048, 131072)
    assert (e2[0], e2[4], *struct.unpack_from("<II", e2, 8)) == (0x80, 0x83, 133120, 4000000)
    assert m[478:510] == bytes(32)
    assert cloud_image.mbr(1, 2048, 10) == cloud_image.mbr_table(1, [(0x83, 2048, 10)], boot=0)


def test_cache_names_keep_architectures_and_firmwares_apart():
    a, x = ARCHES["aarch64"], ARCHES["x86_64"]
    assert cloud_image.cache_key("debian12-password", x, "bios") == "debian12-password"
    assert cloud_image.cache_key("debian12-password", a, "efi") == "debian12-password-arm64-efi"
    assert cloud_image._key_of("debian12-password-0123456789abcdef") == "debian12-password"
    assert cloud_image._key_of("debian12-password-arm64-efi-0123456789abcdef") == "debian12-password-arm64-efi"
    assert cloud_image._key_of("debian12-password-arm64-efi-0123456789abcdef-x1y2") == "debian12-password-arm64-efi"
    with pytest.raises(cloud_image.ImageError, match="only x86_64 has a BIOS"):
        cloud_image.image(__import__("pathlib").Path("/nonexistent"), "debian12-password", arch=a, firmware="bios")


def test_binfmt_rule_names_the_emulator_with_fix_binary_and_argv0_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(debroot, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(debroot, "candidate", lambda p: "1:7.2")
    dest = tmp_path / "qemu-user-static"
    (dest / "usr/libexec/qemu-binfmt").mkdir(parents=True)
    (dest / "usr/libexec/qemu-binfmt/aarch64-binfmt-P").write_text("")
    (dest / ".stamp").write_text("1:7.2\n")
    emu = debroot.Emulator.for_arch(ARCHES["aarch64"], tmp_path, "t")
    name, kind, _off, magic, mask, interp, flags = emu.rule.lstrip(":").split(":")
    assert (name, kind, flags) == ("acc-aarch64", "M", "FP")
    assert magic.startswith(r"\x7f\x45\x4c\x46") and magic.endswith(r"\xb7\x00"), "ELF, machine 0xb7 (aarch64)"
    assert len(bytes.fromhex(mask.replace(r"\x", ""))) == 20
    assert interp == str(dest / "usr/libexec/qemu-binfmt/aarch64-binfmt-P")
    assert debroot.Emulator.for_arch(ARCHES["x86_64"], tmp_path, "t") is None, "this machine runs its own"


# libvirt 9.0's domain capabilities for aarch64 'virt' with and without Debian's qemu-efi-aarch64
DOMCAPS_EFI = """<domainCapabilities><os supported='yes'><enum name='firmware'><value>efi</value></enum>
<loader supported='yes'><value>/usr/share/AAVMF/AAVMF_CODE.ms.fd</value><value>/usr/share/AAVMF/AAVMF_CODE.fd</value>
</loader></os></domainCapabilities>"""
DOMCAPS_NONE = """<domainCapabilities><os supported='yes'><enum name='firmware'/>
<loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE.fd</value></loader></os></domainCapabilities>"""


def test_doctor_says_whether_libvirt_can_pick_uefi_and_names_the_package_when_not():
    assert "offered" in hostfacts.uefi_offered(DOMCAPS_EFI) and "AAVMF_CODE.fd" in hostfacts.uefi_offered(DOMCAPS_EFI)
    msg = hostfacts.uefi_offered(DOMCAPS_NONE)
    assert "NOT offered" in msg and "edk2-aarch64" in msg and "qemu-efi-aarch64" in msg


def test_o_direct_is_the_lab_host_kernels_flag_not_the_guests():
    # Recorded on this machine: the aarch64 guest's QEMU (an x86_64 process) held its
    # cache='none' disk with flags 0o2140002 (O_CLOEXEC|O_LARGEFILE|O_DIRECT|O_RDWR, x86 values).
    from lab.arch import o_direct
    flags = 573442
    assert hostfacts.host_arch(DEBIAN_CAPS) == "x86_64"
    assert flags & o_direct(hostfacts.host_arch(DEBIAN_CAPS))
    assert not flags & o_direct("aarch64")        # the guest's value would have called it buffered
    assert hostfacts.host_arch(OPENEULER_CAPS) == "aarch64" and o_direct("aarch64") == 0o200000
    with pytest.raises(ValueError, match="riscv64"):
        o_direct("riscv64")
