"""The BPF backends behind one interface (tracer.probes.BccBackend): each feeds the
same events (tracer.events) to the same model, which never knows which one did.

- tracepoint: syscall and sched tracepoints; runs wherever BPF tracepoints do.
- kernel: fentry/fexit (or, where fentry does not load, kprobes/kretprobes: the
  hook mode, TAPTRACE_KERNEL_HOOKS) where files are installed, passed and closed,
  and kprobes on the tun/tap ioctls; exact struct-file identity; no syscall
  tracepoint.

`auto` picks the kernel backend only where AUTO_PREFERS_KERNEL says it is proven
(see the README), else the tracepoint backend.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import events as ev
from ..probes import BccBackend, ProbeError

CHOICES = ("auto", "kernel", "tracepoint")
# `auto` takes the kernel backend where it loads (the guest smoke set passes with it
# on Debian's 6.1 and 6.12, and it costs unrelated syscalls nothing), else the
# tracepoint backend, with one line saying why.
AUTO_PREFERS_KERNEL = True


def open_backend(choice: str, on_event: Callable[[ev.Event], None], buffer_pages: int = 256,
                 force_perf: bool = False, bad_ioctls: bool = False,
                 ) -> tuple[BccBackend, str | None]:
    """The attached backend, and a line saying why `auto` did not get the kernel
    backend it tried, or which hooks the kernel backend uses and why (its `note`;
    None when nothing needs saying). bad_ioctls: the kernel backend
    also hooks every ioctl to see TUN ioctls on fds that are not tun/tap fds (the
    tracepoint backend always sees them)."""
    from .kernel import KernelBackend
    from .tracepoint import TracepointBackend

    if choice not in CHOICES:
        raise ProbeError(f"unknown backend {choice!r}: one of {', '.join(CHOICES)}")
    if choice == "tracepoint" or (choice == "auto" and not AUTO_PREFERS_KERNEL):
        return TracepointBackend(on_event, buffer_pages, force_perf), None
    if choice == "kernel":
        k = KernelBackend(on_event, buffer_pages, force_perf, ioctl_check=bad_ioctls)
        return k, getattr(k, "note", None)
    try:
        k = KernelBackend(on_event, buffer_pages, force_perf, ioctl_check=bad_ioctls)
        return k, getattr(k, "note", None)
    except ProbeError as exc:
        reason = str(exc).removeprefix("the kernel backend ")
        why = f"kernel backend unavailable: {reason}; using the tracepoint backend"
    return TracepointBackend(on_event, buffer_pages, force_perf), why
