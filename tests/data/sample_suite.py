"""A tiny suite the self-tests run in a subprocess (not collected on its own).

ACC_SAMPLE=fail: a test that fails after its guest booted (evidence must be attached).
ACC_SAMPLE=hang: a test that waits forever with a VM running (for SIGINT).
ACC_SAMPLE=fault: a test that waits forever with a storage fault in place.
"""
import os
import time

from fixtures.api import claims
from lab.domain import VMSpec


@claims("SER-1")
def test_sample(vms):
    vm = vms.boot(VMSpec("sample"))
    vm.guest.run("echo evidence-marker-in-dmesg > /dev/kmsg")
    if os.environ.get("ACC_SAMPLE") == "hang":
        print(f"SAMPLE-VM-RUNNING {vm.name}", flush=True)
        time.sleep(600)
    assert False, "deliberate failure"


def test_sample_fault(fault):
    if os.environ.get("ACC_SAMPLE") != "fault":
        return
    fault.fail("all")
    print(f"SAMPLE-FAULT-IN-PLACE {' '.join(str(f) for f in fault.files.values())}", flush=True)
    time.sleep(600)
