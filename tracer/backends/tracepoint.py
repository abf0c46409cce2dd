"""The syscall-tracepoint backend (bpf/tracepoint.bpf.c): runs wherever BPF
tracepoints do, with no kernel layout at all (uapi structs and pt_regs only).

Every call of a hooked syscall on the machine pays for its tracepoint, and it sees
fds only from the syscall boundary: an open at the fd's first TUN ioctl, SCM_RIGHTS
receives matched to sends by order (see the README's limits)."""

from __future__ import annotations

from .. import kheaders
from ..probes import BccBackend, bpf_source

SOURCE = "tracepoint.bpf.c"


class TracepointBackend(BccBackend):
    name = "tracepoint"

    def _program(self) -> tuple[str, list[str]]:
        cflags = []
        if kheaders.has_tracepoint_field("sched", "sched_process_exit", "group_dead"):
            cflags.append("-DTT_HAVE_GROUP_DEAD")
        if kheaders.has_tracepoint_field("sched", "sched_prepare_exec", "pid"):
            cflags.append("-DTT_HAVE_PREPARE_EXEC")
        return bpf_source(SOURCE), cflags

    def hooks(self) -> list[dict]:
        return [{"hook": "syscall and sched tracepoints", "how": "tracepoint",
                 "why": "no kernel layout needed; runs wherever BPF tracepoints do"}]
