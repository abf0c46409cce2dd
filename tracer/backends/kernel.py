"""The kernel-function backend (bpf/kernel.bpf.c): fentry/fexit on the vmlinux
functions that install, duplicate, pass and close files, kprobes on the tun/tap/
vhost-net ioctls, the shared sched tracepoints - and no syscall tracepoint, so
syscalls that touch no tun/tap file do not pay.

The vmlinux hooks come in two variants, the same functions, records and bodies
(the hook mode): `fentry` (fentry/fexit: BPF trampolines, arguments read with
direct loads; the cheaper) and `kprobe` (kprobes/kretprobes, the arguments a
kretprobe needs kept per thread at the entry; for kernels where fentry is not
available or refused). The environment variable TAPTRACE_KERNEL_HOOKS chooses:
`auto` (the default: fentry where it loads, else kprobes, with one line saying
why), `fentry` or `kprobe` (that one or fail: for tests and benchmarks). The
mode is in `ready`'s `backend_note` (the `#` line under the header) and doctor.

Everything the program needs to know about this kernel is found at start and
passed in as constants: which functions exist (fentry: BTF FUNCs; kprobe:
/proc/kallsyms, not inlined; the close path was renamed in 6.8), the layouts it
reads (BTF, never headers), and the f_op addresses that say a file is tun's,
tap's or vhost-net's (/proc/kallsyms, after loading the modules). `plan()` does
that without bcc; `hooks()` says what it chose and why (doctor).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from dataclasses import dataclass, field

from .. import btf, kheaders
from .. import events as ev
from ..probes import BccBackend, ProbeError, _captured_output, bpf_source, load_error
from . import layouts

SOURCE = "kernel.bpf.c"
MODULES = ("tun", "tap", "vhost_net")
FOPS = {"tun_fops": "TT_TUN_FOPS", "tap_fops": "TT_TAP_FOPS",
        "vhost_net_fops": "TT_VHOST_FOPS"}
# (struct, member path, constant): the layouts only this program reads (with
# layouts.FD_TABLE and layouts.NETNS)
LAYOUTS = (
    ("file", "f_op", "TT_F_OP_OFF"),
    ("scm_cookie", "fp", "TT_SCM_FP_OFF"),
    ("scm_fp_list", "count", "TT_FPL_COUNT_OFF"),
    ("scm_fp_list", "fp", "TT_FPL_FP_OFF"),
)
REQUIRED_FUNCS = ("fd_install", "do_dup2", "__scm_send", "scm_detach_fds", "begin_new_exec")
HOOK_MODES = ("fentry", "kprobe")
HOOKS_ENV = "TAPTRACE_KERNEL_HOOKS"
# the close path: it empties the fd's slot in the table (fentry reads the slot)
CLOSE_FUNCS = ("file_close_fd_locked", "pick_file")
OPTIONAL_FUNCS = {
    "set_close_on_exec": ("TT_HAVE_SET_CLOEXEC",
                          "F_SETFD/FIOCLEX/FIONCLEX not seen: close-on-exec as at install"),
    "ksys_unshare": ("TT_HAVE_KSYS_UNSHARE", "unshare(CLONE_FILES) not seen"),
    "__x64_sys_close_range": ("TT_HAVE_SYS_CLOSE_RANGE",
                              ("close_range's CLOSE_RANGE_CLOEXEC/UNSHARE not seen "
                               "(its closes one by one, as close)")),
}
# On every ioctl's path, before the file's own ioctl: a TUN ioctl on a file that is
# not tun's or tap's (a VMM given the wrong fd) is seen only here.
IOCTL_CHECK_FUNC = "security_file_ioctl"
# The kprobe variant of each vmlinux hook: (kprobe program, kretprobe program) in
# bpf/kernel.bpf.c built with TT_KPROBES; "close" is whichever CLOSE_FUNCS has.
KPROBE_PROGRAMS = {
    "fd_install": ("fd_install_entry", None),
    "do_dup2": ("do_dup2_entry", "do_dup2_return"),
    "__scm_send": ("scm_send_entry", "scm_send_return"),
    "scm_detach_fds": ("scm_detach_entry", "scm_detach_return"),
    "begin_new_exec": ("exec_entry", None),
    "close": ("close_entry", None),
    "set_close_on_exec": ("cloexec_entry", None),
    "ksys_unshare": ("unshare_entry", "unshare_return"),
    "__x64_sys_close_range": ("close_range_entry", None),
    "security_file_ioctl": ("ioctl_check_entry", None),
}
# the fentry variant's kind of hook, by function (the rest: fentry)
FEXIT = {"do_dup2": "fexit", "__scm_send": "fexit", "scm_detach_fds": "fentry+fexit",
         "ksys_unshare": "fexit"}
# (module function, entry program, return program, module)
KPROBES = (
    ("__tun_chr_ioctl", "tun_ioctl_entry", "tun_ioctl_return", "tun"),
    ("tap_ioctl", "tap_ioctl_entry", "tun_ioctl_return", "tap"),
    ("vhost_net_ioctl", None, "vhost_ioctl_return", "vhost_net"),
)
HOLD_S = 0.5          # how long a message's records wait for their end marker
PATHS = {ev.FK_TUN: "/dev/net/tun", ev.FK_VHOST: ev.VHOST_PATH, ev.FK_TAP: "/dev/tap"}


@dataclass
class Plan:
    mode: str = "fentry"
    cflags: list[str] = field(default_factory=list)
    kprobes: list[tuple[str, str | None, str]] = field(default_factory=list)
    hooks: list[dict] = field(default_factory=list)


def load_modules() -> None:
    """tun, tap and vhost_net must be loaded for their f_op addresses and kprobes."""
    missing = [m for m in MODULES if not os.path.isdir(f"/sys/module/{m}")]
    if missing:
        subprocess.run(["modprobe", "-q", "-a", *missing], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kallsyms(names) -> dict[str, int]:
    """Addresses of the named symbols (data symbols of modules included)."""
    want, out = set(names), {}
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in want and parts[2] not in out:
                    out[parts[2]] = int(parts[0], 16)
    except OSError as exc:
        raise ProbeError(f"the kernel backend cannot read /proc/kallsyms: {exc.strerror}") \
            from None
    return out


def _how(mode: str, func: str) -> str:
    if mode == "fentry":
        return FEXIT.get(func, "fentry")
    entry, ret = KPROBE_PROGRAMS.get(func, KPROBE_PROGRAMS["close"])
    return "kprobe+kretprobe" if entry and ret else "kprobe" if entry else "kretprobe"


def vmlinux_hooks(p: Plan, has, where: str, ioctl_check: bool) -> list[str]:
    """The vmlinux functions to hook in p.mode, by what `has` says exists (fentry:
    a BTF FUNC; kprobe: a kallsyms symbol, a function not inlined): their -D flags,
    with p.hooks (and p.kprobes in kprobe mode) filled in; a ProbeError when a
    function the backend cannot do without is missing."""
    cflags, mode = [], p.mode

    def hook(func: str, why: str, program: str | None = None) -> None:
        p.hooks.append({"hook": func, "how": _how(mode, func), "why": why})
        if mode == "kprobe":
            entry, ret = KPROBE_PROGRAMS[program or func]
            p.kprobes.append((func, entry, ret))

    missing = [f for f in REQUIRED_FUNCS if not has(f)]
    if missing:
        raise ProbeError(f"the kernel backend cannot hook {', '.join(missing)} on this kernel "
                         f"(not {where}: inlined or renamed)")
    for f in REQUIRED_FUNCS:
        hook(f, where)
    close = next((f for f in CLOSE_FUNCS if has(f)), None)
    if close is None:
        raise ProbeError("the kernel backend finds no close path to hook "
                         f"({' or '.join(CLOSE_FUNCS)} {where})")
    cflags.append(f"-DTT_CLOSE_FN={close}")
    hook(close, "the close path on this kernel (pick_file before 6.8); the file read "
                "from the fd table slot it empties", "close")
    for func, (define, without) in OPTIONAL_FUNCS.items():
        if has(func):
            cflags.append(f"-D{define}")
            hook(func, where)
        else:
            p.hooks.append({"hook": func, "how": "none", "why": f"absent: {without}"})
    if not ioctl_check:
        p.hooks.append({"hook": IOCTL_CHECK_FUNC, "how": "none",
                        "why": "not asked: a TUN ioctl on a non-tun/tap fd is not seen"})
    elif has(IOCTL_CHECK_FUNC):
        cflags.append("-DTT_HAVE_IOCTL_CHECK")
        hook(IOCTL_CHECK_FUNC, "a TUN ioctl on a file that is not tun/tap (bad_probe); "
                               "the command is checked first")
    else:
        p.hooks.append({"hook": IOCTL_CHECK_FUNC, "how": "none",
                        "why": "absent: a TUN ioctl on a non-tun/tap fd is not seen"})
    if mode == "kprobe":
        cflags.append("-DTT_KPROBES")
    return cflags


def plan(ioctl_check: bool = True, mode: str = "fentry") -> Plan:
    """What to hook on this kernel and the constants the program needs; a
    ProbeError (one line) when the kernel backend cannot work here. `ioctl_check`:
    also see TUN ioctls on files that are not tun/tap files (every ioctl pays one
    short program for it). `mode`: the vmlinux hooks as fentry/fexit or as
    kprobes/kretprobes (HOOK_MODES)."""
    p = Plan(mode=mode)
    tracing = kheaders.tracing_dir()          # first: what the kernel cannot do at all
    if tracing is None or not os.path.exists(os.path.join(tracing, "kprobe_events")):
        raise ProbeError("the kernel backend needs kprobes (tun/tap ioctls): "
                         "this kernel has no kprobe_events")
    try:
        kb = btf.vmlinux()
        p.cflags += layouts.cflags(LAYOUTS + layouts.FD_TABLE + layouts.NETNS, kb)
        if kb.member_size("scm_fp_list", "count") != 2:
            raise btf.BtfError("scm_fp_list.count is not a short")
    except btf.BtfError as exc:
        raise ProbeError(f"the kernel backend needs the kernel's BTF: {exc}") from None
    if mode == "fentry":
        has, where = kb.has_func, "in vmlinux BTF"
    else:
        syms = kallsyms([*REQUIRED_FUNCS, *CLOSE_FUNCS, *OPTIONAL_FUNCS, IOCTL_CHECK_FUNC])
        has, where = syms.__contains__, "in /proc/kallsyms"
    p.cflags += vmlinux_hooks(p, has, where, ioctl_check)
    if kheaders.has_tracepoint_field("sched", "sched_process_exit", "group_dead"):
        p.cflags.append("-DTT_HAVE_GROUP_DEAD")
    else:
        try:
            p.cflags += layouts.cflags(layouts.GROUP_EXIT, kb)
        except btf.BtfError:
            pass          # the leader's exit is taken for the process's (README)
    p.hooks.append({"hook": "sched_process_fork/exec/exit", "how": "tracepoint",
                    "why": "fork, exec, exit only"})

    load_modules()
    addrs = kallsyms(FOPS)
    if "tun_fops" not in addrs:
        raise ProbeError("the kernel backend cannot find tun_fops in /proc/kallsyms "
                         "(tun not loaded, or built in without KALLSYMS_ALL)")
    if not any(addrs.values()):
        raise ProbeError("/proc/kallsyms shows zero addresses (kptr_restrict): "
                         "run as root, or sysctl kernel.kptr_restrict=0")
    for sym, const in FOPS.items():
        # 1: no file's f_op (modules not loaded: that kind of file cannot exist)
        p.cflags.append(f"-D{const}={addrs.get(sym, 1):#x}ULL")
        p.hooks.append({"hook": sym, "how": "f_op filter",
                        "why": "/proc/kallsyms" if sym in addrs else "module not loaded"})

    syms = kallsyms(k[0] for k in KPROBES)
    for func, entry, ret, module in KPROBES:
        if func not in syms:
            if func == "__tun_chr_ioctl":
                raise ProbeError("the kernel backend cannot find __tun_chr_ioctl "
                                 "(tun module) in /proc/kallsyms")
            p.hooks.append({"hook": func, "how": "none",
                            "why": f"absent ({module} not loaded)"})
            continue
        p.kprobes.append((func, entry, ret))
        p.hooks.append({"hook": func, "how": "kprobe+kretprobe" if entry else "kretprobe",
                        "why": f"{module} module: bcc 0.26 cannot fentry a module"})
    return p


def wanted_hooks(env=os.environ) -> str:
    """The hook mode asked for (HOOKS_ENV): auto, fentry or kprobe."""
    want = env.get(HOOKS_ENV, "").strip() or "auto"
    if want not in ("auto", *HOOK_MODES):
        raise ProbeError(f"{HOOKS_ENV}={want!r}: one of auto, {', '.join(HOOK_MODES)}")
    return want


def modes_to_try(want: str) -> tuple[str, ...]:
    """The hook modes to load in turn: auto tries fentry (the cheaper) first."""
    return HOOK_MODES if want == "auto" else (want,)


def mode_note(mode: str, want: str, fentry_refused: str | None) -> str:
    """The one line that says which hook mode loaded, and why (ready, doctor)."""
    if want != "auto":
        why = f"{HOOKS_ENV}={want}"
    elif fentry_refused:
        why = f"fentry {fentry_refused}"
    else:
        why = "auto"
    return f"kernel backend hooks: {mode} ({why})"


class KernelBackend(BccBackend):
    name = "kernel"

    def __init__(self, *args, ioctl_check: bool = False, hooks: str | None = None,
                 **kw) -> None:
        """ioctl_check: also see TUN ioctls on fds that are not tun/tap fds (plan()).
        hooks: the hook mode (auto, fentry, kprobe); None: HOOKS_ENV's."""
        self.ioctl_check = ioctl_check
        want = hooks or wanted_hooks()
        refused = None
        modes = modes_to_try(want)
        for mode in modes:
            self.mode = mode
            try:
                super().__init__(*args, **kw)
                break
            except ProbeError as exc:
                if mode == modes[-1]:
                    raise
                refused = str(exc).removeprefix("the kernel backend ")
        self.note = mode_note(self.mode, want, refused)
        self.info = dataclasses.replace(self.info, hooks=self.mode)

    def _program(self) -> tuple[str, list[str]]:
        from ..probes import _import_bcc

        if self.mode == "fentry" and not _import_bcc().BPF.support_kfunc():
            raise ProbeError("the kernel backend needs fentry/fexit (BPF trampolines and "
                             "kernel BTF); this kernel or bcc has none")
        self._plan = plan(self.ioctl_check, self.mode)
        self._held: dict[tuple, tuple[float, list[ev.Event]]] = {}
        return bpf_source(SOURCE), self._plan.cflags

    def _attach(self) -> None:
        """The kprobes (bcc attaches fentry programs at load): a program bcc loads
        only now (the verifier speaks here) or a kprobe refused, as one ProbeError."""
        with _captured_output() as noise:
            try:
                for func, entry, ret in self._plan.kprobes:
                    if entry is not None:
                        self._bpf.attach_kprobe(event=func, fn_name=entry)
                    if ret is not None:
                        self._bpf.attach_kretprobe(event=func, fn_name=ret)
                return
            except Exception as exc:  # noqa: BLE001 - bcc raises a bare Exception
                error = exc
        raise load_error(str(error), noise.getvalue(), None)

    def hooks(self) -> list[dict]:
        return list(self._plan.hooks)

    # ---- raw records to model events -------------------------------------------

    def _record(self, raw: bytes) -> None:
        rec = ev.decode(raw)
        if rec is None:
            return
        arg2, fkind = ev.raw_field(raw, "arg2"), ev.raw_field(raw, "fkind")
        if isinstance(rec, (ev.ScmSend, ev.ScmRecv)):
            # one record per file, then a marker with none (the same syscall, so no
            # record of this thread comes between): the records of one message are
            # one send or one receive, delivered at the marker
            key = (type(rec), rec.tid, rec.sock, arg2)
            if rec.files:
                self._held.setdefault(key, (time.monotonic(), []))[1].append(rec)
            else:
                self._deliver(key)
            return
        if isinstance(rec, ev.Open):
            rec = dataclasses.replace(rec, path=self._path(rec.pid, rec.fd, fkind))
        self._on_event(rec)

    def _deliver(self, key: tuple) -> None:
        _since, held = self._held.pop(key, (0.0, []))
        if held:
            fds = tuple(fd for r in held for fd in r.fds)
            files = tuple(f for r in held for f in r.files)
            # (arg2 is the message's id here, not a queue: the files say which message)
            self._on_event(dataclasses.replace(held[0], fds=fds, files=files, queue=0))

    def _flush(self) -> None:
        """After each poll: a message whose marker did not come within HOLD_S (a
        lost record) is delivered as it is."""
        now = time.monotonic()
        for key in [k for k, (since, _r) in self._held.items() if now - since > HOLD_S]:
            self._deliver(key)

    @staticmethod
    def _path(pid: int, fd: int, fkind: int) -> str:
        path = PATHS.get(fkind, "/dev/net/tun")
        if fkind == ev.FK_TAP:       # /dev/tapN: N is the ifindex, the node says which
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("/dev/tap"):
                    path = link
            except OSError:
                pass
        return path
