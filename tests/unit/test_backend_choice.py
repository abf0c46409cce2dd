"""--backend auto|kernel|tracepoint (tracer.backends.open_backend), with stand-ins for
the two backends: which one is opened, and the one line said when auto falls back."""

from __future__ import annotations

import pytest

from tracer import backends
from tracer.backends import kernel, tracepoint
from tracer.probes import ProbeError


@pytest.fixture
def fake(monkeypatch):
    opened: list[str] = []

    class Tp:
        def __init__(self, *_a) -> None:
            opened.append("tracepoint")

    class Kernel:
        refuse: str | None = None

        def __init__(self, *_a, ioctl_check: bool = False) -> None:
            if Kernel.refuse:
                raise ProbeError(Kernel.refuse)
            opened.append("kernel+ioctl" if ioctl_check else "kernel")

    monkeypatch.setattr(tracepoint, "TracepointBackend", Tp)
    monkeypatch.setattr(kernel, "KernelBackend", Kernel)
    return opened, Kernel


def test_explicit_choices_open_that_backend_or_fail(fake):
    opened, k = fake
    backends.open_backend("tracepoint", print)
    backends.open_backend("kernel", print)
    backends.open_backend("kernel", print, bad_ioctls=True)
    backends.open_backend("tracepoint", print, bad_ioctls=True)
    assert opened == ["tracepoint", "kernel", "kernel+ioctl", "tracepoint"]
    k.refuse = "the kernel backend needs fentry"
    with pytest.raises(ProbeError, match="needs fentry"):
        backends.open_backend("kernel", print)
    with pytest.raises(ProbeError, match="unknown backend"):
        backends.open_backend("ebpf", print)


def test_auto_is_the_tracepoint_backend_until_the_kernel_one_is_proven(fake, monkeypatch):
    opened, _k = fake
    monkeypatch.setattr(backends, "AUTO_PREFERS_KERNEL", False)
    assert backends.open_backend("auto", print)[1] is None
    assert opened == ["tracepoint"]


def test_auto_prefers_the_kernel_backend_and_says_why_it_fell_back(fake, monkeypatch):
    opened, k = fake
    monkeypatch.setattr(backends, "AUTO_PREFERS_KERNEL", True)
    assert backends.open_backend("auto", print)[1] is None
    k.refuse = "the kernel backend needs fentry"
    _b, why = backends.open_backend("auto", print)
    assert opened == ["kernel", "tracepoint"]
    assert why == ("kernel backend unavailable: needs fentry; "
                   "using the tracepoint backend")


def test_the_kernel_backend_says_which_hooks_it_uses(fake):
    _opened, k = fake
    k.note = "kernel backend hooks: kprobe (fentry refused: lockdown)"
    assert backends.open_backend("kernel", print)[1] == k.note
    assert backends.open_backend("auto", print)[1] == k.note
