"""The syscall-tracepoint backend (bpf/tracepoint.bpf.c): runs wherever BPF
tracepoints do, with no kernel layout at all (uapi structs and pt_regs only).

Every call of a hooked syscall on the machine pays for its tracepoint, and it sees
fds only from the syscall boundary: an open at the fd's first TUN ioctl, SCM_RIGHTS
receives matched to sends by order (see the README's limits). Where the kernel has
BTF, a TUN ioctl's record carries the file itself (its struct file *, close-on-exec
bit and network namespace, read from the fd table with offsets from that BTF);
without it user space asks /proc, later. With BTF an SCM_RIGHTS record also says
which unix socket's queue the message is on (the receiver's socket, the sender's
peer: its address and inode number, for an address is reused once a socket is
freed), so a receive is matched only to sends on its own queue."""

from __future__ import annotations

from .. import btf, kheaders
from .. import events as ev
from ..probes import BccBackend, bpf_source
from . import layouts

SOURCE = "tracepoint.bpf.c"


class TracepointBackend(BccBackend):
    name = "tracepoint"

    def _program(self) -> tuple[str, list[str]]:
        cflags = [f"-DTT_SCM_PENDING_NS={ev.SCM_PENDING_NS}ULL"]
        group_dead = kheaders.has_tracepoint_field("sched", "sched_process_exit",
                                                   "group_dead")
        if group_dead:
            cflags.append("-DTT_HAVE_GROUP_DEAD")
        if kheaders.has_tracepoint_field("sched", "sched_prepare_exec", "pid"):
            cflags.append("-DTT_HAVE_PREPARE_EXEC")
        self._layout_note = None
        try:   # each set all or none: part of one would not compile
            cflags += layouts.cflags(layouts.FD_TABLE)
            cflags += layouts.cflags(layouts.NETNS)
        except btf.BtfError as exc:
            self._layout_note = str(exc)
        self._queue_note = self._layout_note
        if not self._layout_note:
            try:
                cflags += layouts.cflags(layouts.UNIX_PEER)
            except btf.BtfError as exc:
                self._queue_note = str(exc)
            else:
                try:     # without it a queue is its socket's address alone
                    cflags += layouts.cflags(layouts.SOCK_INO)
                except btf.BtfError:
                    pass
        if not group_dead:
            try:
                cflags += layouts.cflags(layouts.GROUP_EXIT)
            except btf.BtfError:
                pass          # the leader's exit is taken for the process's (README)
        return bpf_source(SOURCE), cflags

    def hooks(self) -> list[dict]:
        out = [{"hook": "syscall and sched tracepoints", "how": "tracepoint",
                "why": "no kernel layout needed; runs wherever BPF tracepoints do"}]
        note = getattr(self, "_layout_note", None)
        out.append({"hook": "a TUN ioctl's file, close-on-exec bit and namespace",
                    "how": "none" if note else "fd table read (BTF offsets)",
                    "why": f"asked of /proc instead: {note}" if note else
                           "at the ioctl itself, not from /proc later"})
        note = getattr(self, "_queue_note", None)
        out.append({"hook": "the unix socket an SCM_RIGHTS message is queued on",
                    "how": "none" if note else
                           "socket, peer and inode read (BTF offsets)",
                    "why": f"receives matched to sends by order and names only: {note}"
                           if note else "a receive matched only to sends on its socket"})
        return out
