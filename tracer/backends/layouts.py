"""The kernel-internal layouts the BPF programs read, from the running kernel's BTF.

Never from headers: headers that do not match the kernel compile cleanly and read
the wrong field (`struct file.f_op` is at byte 40 on Debian's 6.1, 16 on 6.12).
Each entry is (struct, member path, the constant bpf/common.h or a backend's .c
reads it as); `cflags()` turns a set into -D flags or says, in one line, why not.
"""

from __future__ import annotations

from .. import btf

# the current task's fd table: the file at an fd, its close-on-exec bit; whether a
# thread's table is its leader's (common.h, init_event)
FD_TABLE = (
    ("task_struct", "files", "TT_TASK_FILES_OFF"),
    ("task_struct", "group_leader", "TT_TASK_LEADER_OFF"),
    ("files_struct", "fdt", "TT_FILES_FDT_OFF"),
    ("fdtable", "close_on_exec", "TT_FDT_CLOEXEC_OFF"),
    ("fdtable", "fd", "TT_FDT_FD_OFF"),
    ("fdtable", "max_fds", "TT_FDT_MAX_FDS_OFF"),
)
# a tun/tap file's network namespace: file->private_data is a struct tun_file or
# struct tap_queue, each beginning with its struct sock
NETNS = (
    ("file", "private_data", "TT_F_PRIVATE_OFF"),
    ("sock", "__sk_common.skc_net.net", "TT_SK_NET_OFF"),
    ("net", "ns.inum", "TT_NET_INUM_OFF"),
)
# which unix socket an SCM_RIGHTS message is queued on: file->private_data is the
# struct socket of a socket's file (whose ->file points back), ->sk its struct sock,
# unix_sk(sk)->peer the connected socket a send goes to (file.private_data: NETNS)
UNIX_PEER = (
    ("socket", "file", "TT_SOCKET_FILE_OFF"),
    ("socket", "sk", "TT_SOCKET_SK_OFF"),
    ("sock", "__sk_common.skc_family", "TT_SK_FAMILY_OFF"),
    ("unix_sock", "peer", "TT_UNIX_PEER_OFF"),
)
# whether an exiting thread is its group's last (sched_process_exit has no group_dead
# field before 6.16): do_exit() has counted it out of signal->live by then
GROUP_EXIT = (
    ("task_struct", "signal", "TT_TASK_SIGNAL_OFF"),
    ("signal_struct", "live", "TT_SIGNAL_LIVE_OFF"),
)
# which socket that is, beyond its address (the kernel reuses a freed socket's): its
# inode number, sk->sk_socket's (a struct socket lives in a struct socket_alloc,
# beside its inode)
SOCK_INO = (
    ("sock", "sk_socket", "TT_SK_SOCKET_OFF"),
    ("socket_alloc", "vfs_inode", "TT_SOCKET_INODE_OFF"),
    ("inode", "i_ino", "TT_INODE_INO_OFF"),
)
# (struct, member path, size in bytes): the widths the programs read them with
SIZES = (
    ("inode", "i_ino", 8),
    ("fdtable", "max_fds", 4),
    ("net", "ns.inum", 4),
    ("sock", "__sk_common.skc_family", 2),
    ("signal_struct", "live", 4),
)


def cflags(wanted, kb: btf.Btf | None = None) -> list[str]:
    """-D flags with each offset of `wanted`; btf.BtfError (one line) when one is
    missing or not as wide as the program reads it."""
    kb = kb or btf.vmlinux()
    names = {(s, p) for s, p, _c in wanted}
    for struct, path, size in SIZES:
        if (struct, path) in names and kb.member_size(struct, path) != size:
            raise btf.BtfError(f"{struct}.{path} is not {size} bytes wide")
    return [f"-D{const}={kb.offset_of(struct, path)}" for struct, path, const in wanted]
