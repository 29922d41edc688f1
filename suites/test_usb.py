"""Managing VM USB (USB-1..10): the guide's three controllers, their ports and
hot-swap rules as the guest sees them, and USB passthrough of host devices the
lab config lists."""
import re

import allure
import pytest

from fixtures.api import claims, deviation
from lab import usb
from lab import xml as X
from lab.domain import AttachRefused, DomainError, VMSpec
from lab.migration import MigrationTarget, MigrationTargetError
from lab.timeouts import Deadline

TABLET = ("0627", "0001")
# Failures of a migration that had started: the destination's QEMU could not take the device.
DESTINATION_SIDE = r"(?i)in use by|destination|incoming|unexpectedly closed|Failed to (start|open|claim)|Device or resource busy"


@pytest.fixture(scope="module")
def usb_vm(module_vms):
    return module_vms.boot(VMSpec("usb", usb=True, devices=usb.guide_controllers() + [usb.tablet()]))


def observable(vm, kinds=("UHCI", "EHCI", "xHCI")):
    """The controller kinds this guest can show; the rest are reported, not failed:
    a guest kernel without the driver (arm64 Debian has no UHCI) says nothing about the platform."""
    missing = vm.guest.usb.driver_missing(kinds)
    if missing:
        allure.attach("\n".join(f"{k}: {why}" for k, why in missing.items()), name="not observable in this guest",
                      attachment_type=allure.attachment_type.TEXT)
    return [k for k in kinds if k not in missing], missing


@claims("USB-1")
def test_guest_sees_uhci_ehci_and_xhci_host_controllers(usb_vm):
    kinds_ok, missing = observable(usb_vm)
    hubs = usb_vm.guest.usb.root_hubs()
    kinds = {h.kind for h in hubs}
    assert set(kinds_ok) <= kinds, f"guest host controllers: {sorted(kinds)}"
    pci = {d.bdf: d for d in usb_vm.guest.pci.devices()}
    model_of_kind = {"UHCI": "piix3-uhci", "EHCI": "ehci", "xHCI": "nec-xhci"}
    for h in hubs:
        dev = pci[h.pci]
        assert (dev.vendor, dev.device) == usb.CONTROLLER_PCI_IDS[model_of_kind[h.kind]], \
            f"the guest's {h.kind} at {h.pci} is {dev.vendor}:{dev.device}, not libvirt's {model_of_kind[h.kind]}"
    if missing:
        pytest.skip("; ".join(f"{k} not observable: {why}" for k, why in missing.items()))


@claims("USB-2")
def test_port_counts_are_as_documented(usb_vm):
    kinds_ok, missing = observable(usb_vm)
    ports = usb_vm.guest.usb.ports_by_kind()
    for kind, documented in usb.DOCUMENTED_PORTS.items():
        if kind in missing:
            continue
        assert ports.get(kind) == documented, f"{kind}: the guest sees {ports.get(kind)} ports, the guide says {documented}"
    xhci = sorted((h.speed, h.maxchild) for h in usb_vm.guest.usb.root_hubs() if h.kind == "xHCI")
    assert xhci == [(480, 4), (5000, 4)], f"xHCI root hubs (speed Mb/s, ports): {xhci}; the guide: 4 USB 2 + 4 USB 3"
    if missing:
        pytest.skip("; ".join(f"{k} not observable: {why}" for k, why in missing.items()))


def refusal_about(reason: str, vm_name: str, pattern: str) -> bool:
    """libvirt's reason names what the claim is about (the VM's own name, which has 'usb'
    in it, does not count)."""
    return re.search(pattern, reason.replace(vm_name, "<vm>"), re.I) is not None


@claims("USB-3")
def test_second_controller_of_a_type_is_refused_or_recorded(vms):
    uhci, ehci, _ = usb.guide_controllers()
    # control: the same nec-xhci at the same index 3, as the VM's only xHCI, is accepted
    vms.release(vms.define(VMSpec("usb-xhci-at-3", usb=True, devices=[uhci, ehci, X.usb_controller("nec-xhci", 3)])))
    spec = VMSpec("usb-two-xhci", usb=True,
                  devices=usb.guide_controllers() + [X.usb_controller("nec-xhci", 3)])
    try:
        vm = vms.define(spec)
    except DomainError as e:
        allure.attach(str(e), name="libvirt refused a second nec-xhci", attachment_type=allure.attachment_type.TEXT)
        assert refusal_about(e.reason, spec.role, r"usb|controller|xhci"), \
            f"the second nec-xhci was refused, but not for the controller: {e.reason}"
        return
    vm.start()
    xhcis = {h.pci for h in vm.guest.usb.root_hubs() if h.kind == "xHCI"}
    record = f"libvirt accepted a second nec-xhci controller; the guest sees {len(xhcis)} xHCI controllers: {sorted(xhcis)}"
    allure.attach(record, name="second controller of a type", attachment_type=allure.attachment_type.TEXT)
    assert vm.domain.state()[0] == "running"
    deviation("USB-3", f"{record} (the guide says one controller of a type per VM)")


@claims("USB-4")
def test_usb_controller_cannot_be_hot_plugged(usb_vm):
    before = len(usb_vm.guest.usb.root_hubs())
    ctrl = X.usb_controller("qemu-xhci", 5)
    with pytest.raises(AttachRefused) as refused:
        usb_vm.domain.attach(ctrl, live=True)
    reason = str(refused.value)
    assert refusal_about(reason, usb_vm.name, r"controller.*(hot.?plug|live)|(hot.?plug|live).*controller"), \
        f"the live attach was refused, but not because a controller cannot be hot-plugged: {reason}"
    assert usb_vm.domain.state()[0] == "running" and usb_vm.guest.boot_id() == usb_vm.boot_id
    assert len(usb_vm.guest.usb.root_hubs()) == before
    # control: the same controller XML is a valid device: the persistent definition takes it
    usb_vm.domain.attach(ctrl, live=False, config=True)
    usb_vm.domain.detach(ctrl, live=False, config=True)


@claims("USB-5")
def test_tablet_lands_on_the_usb_1_1_controller(usb_vm):
    addr = usb_vm.domain.live_xml().find("devices/input[@type='tablet']/address")
    assert addr is not None and addr.get("bus") == "0", "libvirt put the tablet on bus 0 (the UHCI, index 0)"
    _, missing = observable(usb_vm, ("UHCI",))
    if missing:
        pytest.skip(f"the tablet's controller is not observable: {missing['UHCI']}")
    tablet = usb_vm.guest.usb.find(*TABLET)
    assert tablet is not None, "the guest sees no USB tablet"
    hub = usb_vm.guest.usb.controller_of(tablet)
    assert hub.kind == "UHCI" and tablet.speed == 12, f"the tablet sits on {hub.kind} at {tablet.speed} Mb/s"


@claims("USB-10")
def test_vm_with_an_absent_usb_device_fails_to_start(vms):
    absent = usb.hostdev(vendor="fffe", product="fffd", guest_address=usb.usb_address(0, 1))
    vm = vms.define(VMSpec("usb-absent", usb=True, devices=usb.guide_controllers() + [absent]))
    with pytest.raises(DomainError) as e:
        vm.start(Deadline(30, "a VM with an absent USB device"))
    # libvirt's own refusal for the device (the VM's name has "usb" in it: any error would match that)
    assert re.search(r"did not find USB device (0x)?fffe:(0x)?fffd", str(e.value), re.I), str(e.value)
    assert not vm.domain.is_active()
    # control: a VM with the same controllers and without the absent device starts
    control = vms.boot(VMSpec("usb-present", usb=True, devices=usb.guide_controllers()))
    assert control.guest.boot_id()


# ------------------------------------------------------------------ passthrough (lab hosts with USB devices)

@pytest.fixture
def host_usb(lab):
    present = usb.host_devices_sysfs(lab.sys / "bus/usb/devices")
    dev = usb.usable(lab.hostside.listed("usb"), present)[0]
    lab.lease_device("usb", f"{dev.vendor}:{dev.product}@{dev.bus}-{dev.device}", wait_s=600)
    return dev


def passthrough(dev, port=1):
    """The guide's form: host bus/device, onto the xHCI (index 2) at a fixed port."""
    return usb.hostdev(bus=dev.bus, device=dev.device, guest_address=usb.usb_address(2, port))


@claims("USB-6")
def test_host_usb_device_shows_up_on_the_configured_controller_and_port(vms, host_usb):
    vm = vms.boot(VMSpec("usb-pass", usb=True, devices=usb.guide_controllers() + [passthrough(host_usb, port=2)]))
    seen = vm.guest.usb.wait_for(host_usb.vendor, host_usb.product)
    hub = vm.guest.usb.controller_of(seen)
    assert hub.kind == "xHCI" and seen.devpath == "2", f"the device sits on {hub.kind} port {seen.devpath}"


def in_definition(vm, dev) -> bool:
    """The USB hostdev (by its host bus/device) is in the VM's persistent definition."""
    addr = dev.find("source/address")
    return any(h.find("source/address") is not None
               and (h.find("source/address").get("bus"), h.find("source/address").get("device"))
               == (addr.get("bus"), addr.get("device"))
               for h in vm.domain.inactive_xml().findall("devices/hostdev[@type='usb']"))


def usb_settled(vm, marker=TABLET):
    """The guest's USB enumeration after a boot: the marker device (a tablet on the same xHCI)
    is seen, so the controller's ports were scanned."""
    vm.guest.usb.wait_for(*marker, seconds=60)


@claims("USB-7")
def test_live_usb_attach_lasts_until_restart_config_persists(vms, host_usb):
    marker = usb.tablet(usb.usb_address(2, 3))            # on the xHCI, beside the passthrough port
    vm = vms.boot(VMSpec("usb-hotswap", usb=True, devices=usb.guide_controllers() + [marker]))
    dev = passthrough(host_usb)
    vm.domain.attach(dev, live=True)
    vm.guest.usb.wait_for(host_usb.vendor, host_usb.product)
    assert not in_definition(vm, dev), "a --live USB device was written into the persistent definition"
    vm.poweroff()
    vm.start()
    usb_settled(vm)
    with pytest.raises(TimeoutError):       # and it does not come late either
        vm.guest.usb.wait_for(host_usb.vendor, host_usb.product, seconds=5)
    assert vm.guest.usb.find(host_usb.vendor, host_usb.product) is None, "a --live USB device survived a restart"
    vm.domain.attach(dev, live=True, config=True)
    assert in_definition(vm, dev), "a --config USB device is not in the persistent definition"
    vm.poweroff()
    vm.start()
    vm.guest.usb.wait_for(host_usb.vendor, host_usb.product)
    vm.domain.detach(dev, live=True, config=True)
    # the guest learns of a USB unplug after QEMU's DEVICE_REMOVED: wait for it to let go
    vm.guest.usb.wait_gone(host_usb.vendor, host_usb.product)
    assert not in_definition(vm, dev), "the USB device is still in the persistent definition after detach --config"


@claims("USB-8")
def test_usb_device_goes_to_one_vm_only(vms, host_usb):
    first = vms.boot(VMSpec("usb-owner", usb=True, devices=usb.guide_controllers() + [passthrough(host_usb)]))
    first.guest.usb.wait_for(host_usb.vendor, host_usb.product)
    second = vms.define(VMSpec("usb-second", usb=True, devices=usb.guide_controllers() + [passthrough(host_usb)]))
    with pytest.raises(DomainError) as refused:
        second.start(Deadline(30, "a second VM asking for the same USB device"))
    assert first.name in refused.value.reason, \
        f"the second VM was refused, but libvirt does not say {first.name} holds the device: {refused.value.reason}"
    assert first.guest.usb.find(host_usb.vendor, host_usb.product) is not None
    vms.release(first)                  # control: once the device is free, the same VM gets it
    second.start()
    second.guest.usb.wait_for(host_usb.vendor, host_usb.product)


@pytest.fixture
def migration_target(lab):
    """A second libvirt endpoint on the lab host (its own daemon and host UUID)."""
    target = MigrationTarget(lab.host, lab.hdir)
    missing = target.missing_tools()
    if missing:
        pytest.skip(f"lab host {lab.host.name} has no {', '.join(missing)}: no second libvirt endpoint to migrate to")
    lab.push_undo(f"stopped the migration target on {lab.host.name}", target.close)
    yield target.start()
    lab.undo_now(target.close)


@claims("USB-9")
def test_vm_with_usb_passthrough_cannot_live_migrate(vms, host_usb, migration_target):
    """A real live migration to a second libvirt endpoint: with the USB device assigned it
    must be refused, for the device; the same VM, the device detached, is the control and
    migrates."""
    dev = passthrough(host_usb)
    vm = vms.boot(VMSpec("usb-migrate", usb=True, devices=usb.guide_controllers() + [dev]))
    vm.guest.usb.wait_for(host_usb.vendor, host_usb.product)
    outcome = vm.migrate(migration_target)
    if outcome.done:
        seen = migration_target.monitor(vm.name, "info usb")
        deviation("USB-9", f"libvirt live-migrated {vm.name} with host USB device {host_usb.vendor}:{host_usb.product} "
                           f"(bus {host_usb.bus} device {host_usb.device}) to a second libvirt endpoint; there it is "
                           f"{migration_target.state(vm.name)} and QEMU's 'info usb' shows: {seen.strip()!r}")
    why = outcome.refusal.replace(vm.name, "<vm>")
    assert re.search(r"(?i)usb|hostdev|host device", why), \
        f"the migration was refused, but not for the USB device: {outcome.refusal}"
    # refused by the source before the migration started, not by the destination failing to
    # claim the same physical device (both endpoints are on one lab host)
    assert not re.search(DESTINATION_SIDE, why), \
        f"the migration started and failed on the destination, not refused before it began: {outcome.refusal}"
    assert migration_target.state(vm.name).startswith("absent"), "the destination has the VM after a refusal"
    assert vm.domain.state()[0] == "running" and vm.guest.usb.find(host_usb.vendor, host_usb.product) is not None, \
        "after the refused migration the VM or its USB device is gone"
    vm.domain.detach(dev, live=True)                      # control: the same VM without the device migrates
    vm.guest.usb.wait_gone(host_usb.vendor, host_usb.product)
    moved = vm.migrate(migration_target)
    if not moved.done:
        raise MigrationTargetError(f"{vm.name} could not migrate to {migration_target.uri} without the USB device "
                                   f"either, so this lab cannot judge USB-9: {moved.refusal}")
    assert migration_target.state(vm.name) == "running", \
        f"the control migration finished, but the target says {vm.name} is {migration_target.state(vm.name)}"
