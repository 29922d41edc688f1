"""The certification names the hardware: a Kunpeng's CPU decoded from its implementer and
part numbers (recorded /proc/cpuinfo), the server's DMI make, model and firmware (no serial)."""
from lab import hostfacts
from lab.arch import cpu_model
from lab.hostexec import LocalHost

KUNPENG_920 = """processor\t: 0
BogoMIPS\t: 200.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma dcpop asimddp asimdfhm
CPU implementer\t: 0x48
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd01
CPU revision\t: 0

processor\t: 1
CPU implementer\t: 0x48
CPU part\t: 0xd01
"""
X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n"


def test_a_kunpeng_is_named_not_numbered():
    assert cpu_model(KUNPENG_920) == "HiSilicon Kunpeng 920 (TaiShan v110)"
    assert cpu_model(X86) == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"
    unknown = KUNPENG_920.replace("0xd01", "0xdff")
    assert cpu_model(unknown) == "HiSilicon part 0xdff", "an unknown part keeps its number"


class DmiHost(LocalHost):
    FILES = {"/sys/class/dmi/id/sys_vendor": "Huawei\n", "/sys/class/dmi/id/product_name": "TaiShan 200 (Model 2280)\n",
             "/sys/class/dmi/id/product_version": "To be filled by O.E.M.\n",
             "/sys/class/dmi/id/bios_version": "1.79\n", "/sys/class/dmi/id/bios_date": "03/24/2022\n",
             "/sys/class/dmi/id/product_serial": "2102311TYBN0KA000123\n"}

    def read_text(self, path):
        try:
            return self.FILES[str(path)]
        except KeyError:
            raise OSError(2, "No such file") from None


def test_the_servers_dmi_without_serial_or_placeholders():
    got = hostfacts.dmi(DmiHost("kp1"))
    assert got == {"host.dmi.vendor": "Huawei", "host.dmi.product": "TaiShan 200 (Model 2280)",
                   "host.dmi.bios_version": "1.79", "host.dmi.bios_date": "03/24/2022"}
    assert not any("2102311TYBN0KA000123" in v for v in got.values())


def test_a_host_without_dmi_says_so():
    class NoDmi(DmiHost):
        FILES = {}
    assert hostfacts.dmi(NoDmi("vm")) == {"host.dmi": "(none: the lab host's sysfs has no /sys/class/dmi/id)"}
