"""The guest smoke set on Debian's own kernels: taptrace must load and trace right on
the kernels users run, not only on this machine's.

Each kernel boots once (tests/guest/guestvm.py: QEMU TCG, the host root read-only over
9p) and runs the integration tests marked `smoke` there - the demo, a fork/exec
handoff, SCM_RIGHTS (sendmsg and sendmmsg), CLONE_FILES (with and without exec), a
multi-queue tap, the real vhost-net sequence, doctor - each comparing taptrace's
table with /proc inside the guest - once with each backend (the kernel backend's own
test, copies made before the first TUN ioctl, with the kernel backend only), the
kernel backend once with its fentry hooks and once with its kprobe variant
(`kernel:kprobe`: TAPTRACE_KERNEL_HOOKS=kprobe, what a kernel refusing fentry gets). `make test-guest` runs the whole integration suite
the same way.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import guestvm

# Every smoke test must run and pass in each kernel with each backend; a skip there is a
# failure here (the tracepoint run leaves out the kernel backend's own tests by marker).
SMOKE_MIN = 12


# Both backends on each kernel: `auto` picks the kernel backend there, and the
# tracepoint backend is what every kernel without fentry/kprobes gets; the kernel
# backend in both hook modes (BACKEND[:HOOKS]: fentry, which auto picks there, and
# kprobe, which it falls back to where fentry is refused).
BACKENDS = os.environ.get("TAPTRACE_GUEST_BACKENDS",
                          "tracepoint kernel:fentry kernel:kprobe").split()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("series", guestvm.DEFAULT_SERIES)
def test_smoke_set_in_debians_kernel(series, backend, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the guest tests need root (they run taptrace in the guest as root)")
    if os.environ.get("TAPTRACE_SKIP_GUEST") == "1":
        pytest.skip("TAPTRACE_SKIP_GUEST=1")
    try:
        release = guestvm.resolve(series)
    except guestvm.GuestError as exc:
        pytest.fail(f"{exc} (make test installs them: tests/guest/guestvm.py --install)")

    # every tracer in the guest runs with this backend (TAPTRACE_* goes into the guest)
    backend, _, hooks = backend.partition(":")
    monkeypatch.setenv("TAPTRACE_BACKEND", backend)
    if hooks:
        monkeypatch.setenv("TAPTRACE_KERNEL_HOOKS", hooks)
    else:
        monkeypatch.delenv("TAPTRACE_KERNEL_HOOKS", raising=False)
    marks = "smoke" if backend == "kernel" else "smoke and not kernel_backend"
    outcome = guestvm.run_pytest(release, ["-m", marks, "tests/integration"], timeout=1200)

    print(outcome.summary())
    assert not outcome.failures, f"{release}: " + "; ".join(outcome.failures)
    assert outcome.rc == 0, outcome.summary()
    assert outcome.counts["passed"] >= SMOKE_MIN, outcome.summary()
    assert outcome.counts["skipped"] == 0, outcome.skips
