"""A libvirt refusal is a lab problem when it shows the lab could not do its part
(security driver, permissions, a harness helper that did not answer), and the
product's answer otherwise.  The messages are libvirt's and QEMU's own texts."""
import pytest

from lab.errors import LabError, kind
from lab.refusals import HelperNotReady, SecurityRefusal, classify

RUN = "/srv/acc-harness/runs/1a2b3c"

LAB_PROBLEMS = [
    # the fault backend's socket, not answering (IOS-8 on a remote lab host)
    ("internal error: qemu unexpectedly closed the monitor: 2026-12-05T10:00:00.000000Z qemu-system-x86_64: "
     f"-blockdev {{\"driver\":\"nbd\",\"server\":{{\"type\":\"unix\",\"path\":\"{RUN}/faults/nbd-ab12cd.sock\"}}}}: "
     f"Failed to connect to '{RUN}/faults/nbd-ab12cd.sock': Connection refused", HelperNotReady, None),
    (f"Failed to connect socket to '{RUN}/vhost-user/vu0.sock': No such file or directory", HelperNotReady, None),
    # SELinux (security_selinux.c)
    ("unable to set security context 'system_u:object_r:svirt_image_t:s0:c392,c662' on "
     f"'{RUN}/vm1/overlay.qcow2': Permission denied", SecurityRefusal, "SELinux"),
    # DAC: the storage access check and the ownership change (security_dac.c)
    (f"Cannot access storage file '{RUN}/vm1/overlay.qcow2' (as uid:107, gid:107): Permission denied",
     SecurityRefusal, "file permissions"),
    (f"unable to set user and group to '107:107' on '{RUN}/vm1/serial.log': Operation not permitted",
     SecurityRefusal, "file permissions"),
    # QEMU's own open() of an image, passed through libvirt
    ("internal error: process exited while connecting to monitor: qemu-system-aarch64: -blockdev "
     f"{{...}}: Could not open '{RUN}/vm1/disk.qcow2': Permission denied", SecurityRefusal, "file permissions"),
    # AppArmor
    ("internal error: cannot load AppArmor profile 'libvirt-6d0e7c0a-1b7e-4b7a-9a7e-3f0d0c0a0b0c'",
     SecurityRefusal, "AppArmor"),
]

PRODUCT_ANSWERS = [
    "Requested operation is not valid: PCI device 0000:01:00.1 is in use by driver QEMU, domain acc-pci-a",
    "Requested operation is not valid: USB device 001:002 is in use by driver QEMU, domain acc-usb-a",
    "Operation not supported: live attach of device 'controller' is not supported",
    "unsupported configuration: Only one USB controller of model 'nec-xhci' is supported",
    "XML error: Invalid value for attribute 'error_policy' in element 'driver': 'retry'.",
    # a socket that is not the harness's: the product's (or the config's) problem, not a helper of ours
    "Failed to connect to '/var/run/openvswitch/db.sock': Connection refused",
]


@pytest.mark.parametrize("message,cls,driver", LAB_PROBLEMS)
def test_lab_problems_are_lab_errors_naming_the_file_and_the_fix(message, cls, driver):
    err = classify("libvirt could not start acc-x", message, [RUN])
    assert isinstance(err, cls) and isinstance(err, LabError) and kind(err) == "lab problem"
    assert "Fix:" in str(err) or cls is HelperNotReady
    assert RUN in str(err) or driver == "AppArmor"
    if driver:
        assert err.driver.startswith(driver)


@pytest.mark.parametrize("message", PRODUCT_ANSWERS)
def test_the_products_answers_stay_findings(message):
    assert classify("attach to acc-x", message, [RUN]) is None
