"""Run by a self-test in a subprocess: the first test leaves the module's shared guest
hung (its SSH server stopped, the domain still running), the second must get a fresh guest
and pass, and the report must say the guest was replaced."""
from fixtures.api import claims, shared_vm
from lab.domain import VMSpec
from lab.timeouts import Deadline, poll

guest = shared_vm(lambda: VMSpec("shared"))


@claims("SER-1")
def test_breaks_the_shared_guest(guest):
    print(f"SHARED-FIRST {guest.name} {guest.boot_id}", flush=True)
    # every dropbear (this session's too) stopped a moment later: the guest no longer answers
    guest.guest.run("setsid sh -c 'sleep 1; kill -STOP $(pidof dropbear)' </dev/null >/dev/null 2>&1 &")
    poll(lambda: guest.access.unresponsive(2) is not None, Deadline(30, "the guest to stop answering over SSH"))
    assert False, "deliberate failure that leaves the shared guest dead"


@claims("SER-1")
def test_gets_a_guest_that_answers(guest):
    print(f"SHARED-SECOND {guest.name} {guest.boot_id}", flush=True)
    assert guest.guest.run("true", check=False).rc == 0
