"""The passthrough XML the harness builds from a lab inventory is what libvirt's
own parser accepts; with the device absent (this host has none) libvirt itself
refuses to start the VM, naming the device."""
import pytest

from lab import config, pci, usb
from lab.domain import DomainError, VMSpec, random_mac
from lab.run import Lab

pytestmark = pytest.mark.lab
ABSENT = "0000:7e:1f.6"      # no such device on this machine


@pytest.fixture(scope="module")
def run():
    r = Lab(config.load())
    yield r
    r.close()


@pytest.mark.parametrize("device, names", [
    # on a host without VFIO, libvirt refuses for that before it looks for the device
    (lambda: pci.hostdev_pci(ABSENT), ("7e:1f.6", "not found", "No such", "support VFIO")),
    (lambda: pci.hostdev_interface(ABSENT, random_mac(), 1),
     ("7e:1f.6", "not found", "No such", "support VFIO", "support passthrough")),
    (lambda: usb.hostdev(bus=7, device=99, guest_address=usb.usb_address(0, 1)), ("007", "USB", "usb")),
], ids=["pci-hostdev", "sriov-interface", "usb-hostdev"])
def test_libvirt_accepts_the_xml_and_refuses_the_absent_device(run, device, names):
    import libvirt
    from lab import xml as X
    spec = VMSpec("pt-xml", usb=True, devices=usb.guide_controllers() + [device()])
    vm = run.new_vm(spec)                     # libvirt's parser took it
    try:
        X_dom = X.to_string(vm.domain.inactive_xml())
        run.session.conn.defineXMLFlags(X_dom, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)   # and its schema
        with pytest.raises(DomainError) as e:
            vm.start()
        msg = str(e.value)
        assert any(n in msg for n in names), f"refused for another reason: {msg}"
        assert not vm.domain.is_active()
    finally:
        run.release(vm)
