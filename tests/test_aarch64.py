"""The harness is architecture-neutral: an aarch64 guest (Kunpeng's architecture)
boots under TCG from the image built of Debian's arm64 packages, and the same
probes read it.  The full suites run with `--lab labs/local-aarch64.toml`."""
import pytest

from lab import config, pcie
from lab.domain import VMSpec
from lab.run import Lab
from lab.timeouts import Deadline

pytestmark = pytest.mark.lab


def test_aarch64_guest_boots_and_is_probed_like_any_other():
    cfg = config.load(config.REPO / "labs/local-aarch64.toml")
    run = Lab(cfg)
    try:
        with run.paced():        # its factor (4), not the process default
            _smoke(run)
    finally:
        run.close()


def _smoke(run):
    vm = run.new_vm(VMSpec("arm-smoke", pcie_root_ports=3, pcie_bridge=True))
    xml = vm.domain.inactive_xml()
    assert xml.find("os/type").get("machine").startswith("virt") and xml.find("os/type").get("arch") == "aarch64"
    assert "console=ttyAMA0" in xml.find("os/cmdline").text
    vm.start()
    g = vm.guest
    assert g.check_output("uname -m").strip() == "aarch64"
    live = vm.domain.live_xml()
    assert {d.bdf for d in g.pci.root_ports()} == {c.address.bdf for c in pcie.root_ports(live)}
    assert pcie.numbering_problems(live) == []
    assert g.block.find("acc-root") is not None
    with vm.console() as con:
        con.wait_connected(Deadline(10, "virsh console"))
        con.sync_shell(Deadline(30, "a console shell"))
        assert con.run("uname -m", Deadline(20, "uname over the console")).stdout.strip() == "aarch64"
