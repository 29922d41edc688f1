"""A tiny suite the self-tests run in a subprocess (not collected on its own).

ACC_SAMPLE=fail: a test that fails after its guest booted (evidence must be attached).
ACC_SAMPLE=hang: a test that waits forever with a VM running (for SIGINT).
"""
import os
import time

from fixtures.plugin import claims
from lab.domain import VMSpec


@claims("SER-1")
def test_sample(vms):
    vm = vms.boot(VMSpec("sample"))
    vm.guest.run("echo evidence-marker-in-dmesg > /dev/kmsg", check=True)
    if os.environ.get("ACC_SAMPLE") == "hang":
        print(f"SAMPLE-VM-RUNNING {vm.name}", flush=True)
        time.sleep(600)
    assert False, "deliberate failure"
