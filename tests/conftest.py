"""Make tests/tapkit.py importable as `tapkit` from every test directory; inside the
test guest (tests/guest), leave out what cannot run there."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

IN_GUEST = os.environ.get("TAPTRACE_IN_GUEST") == "1"
# Test files a TCG guest does not run, and why (each still runs on the host).
GUEST_SKIP = {
    "test_guest.py": "boots the guest itself: it runs on the host",
    "test_libvirt.py": "libvirtd probes QEMU for minutes under nested TCG; host only",
}


def pytest_collection_modifyitems(config, items):
    if not IN_GUEST:
        return
    for item in items:
        reason = GUEST_SKIP.get(item.path.name)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"in the test guest: {reason}"))
