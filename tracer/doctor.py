"""`taptrace doctor`: what tracing needs on this machine, what is missing, how to fix it.

Every check is a function that returns Check records; run_checks() never raises,
whatever the machine looks like. bcc is imported only inside its check (after
tracefs is mounted: bcc picks its tracing dir at import time).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import kheaders

TUN = "/dev/net/tun"
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
SYSTEM_PYTHON_BCC = "/usr/lib/python3/dist-packages/bcc"
APT_BCC = "apt-get install python3-bpfcc"
# What the tracer cannot start without; the rest is information.
REQUIRED = ("root", "tracefs", "bcc", "kernel headers", "bpf program", "tracepoints", "bpf load")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def _cap_eff(status: str) -> int | None:
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)$", status, re.MULTILINE)
    return int(m.group(1), 16) if m else None


def check_root() -> list[Check]:
    try:
        caps = _cap_eff(Path("/proc/self/status").read_text())
    except OSError:
        caps = None
    have = [] if caps is None else [n for n, bit in (("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
                                                     ("CAP_BPF", CAP_BPF),
                                                     ("CAP_PERFMON", CAP_PERFMON))
                                    if caps >> bit & 1]
    enough = "CAP_SYS_ADMIN" in have or {"CAP_BPF", "CAP_PERFMON"} <= set(have)
    euid = os.geteuid()
    detail = f"euid {euid}, effective: {' '.join(have) or 'none of CAP_SYS_ADMIN/CAP_BPF'}"
    if euid == 0 and enough:
        return [Check("root", True, detail)]
    fix = "run as root: sudo taptrace ..." if euid != 0 else \
        "root lacks BPF capabilities here (a container?): run with CAP_SYS_ADMIN or " \
        "CAP_BPF+CAP_PERFMON"
    return [Check("root", False, detail, fix)]


def check_tracefs() -> list[Check]:
    d = kheaders.ensure_tracefs()
    if d is not None:
        return [Check("tracefs", True, d)]
    mounted = kheaders.tracing_dir()
    if mounted is not None:
        return [Check("tracefs", False, f"{mounted} is mounted but not readable",
                      "run as root")]
    fix = "mount -t tracefs nodev /sys/kernel/tracing" if os.geteuid() == 0 else \
        "run as root (taptrace mounts it)"
    return [Check("tracefs", False, "not mounted", fix)]


def check_bcc() -> list[Check]:
    try:
        import bcc
    except ImportError as exc:
        fix = APT_BCC
        if os.path.isdir(SYSTEM_PYTHON_BCC):
            fix = (f"bcc is installed for the system Python only: run with /usr/bin/python3, "
                   f"or a venv made with --system-site-packages (this is {sys.executable})")
        return [Check("bcc", False, f"cannot import bcc ({exc})", fix)]
    except Exception as exc:  # noqa: BLE001 - e.g. libbcc.so fails to load
        return [Check("bcc", False, f"importing bcc failed: {exc}",
                      f"reinstall: {APT_BCC} --reinstall")]
    where = getattr(bcc, "__file__", None) or "?"
    if not hasattr(bcc, "BPF"):
        return [Check("bcc", False,
                      f"{where} is the unrelated PyPI package 'bcc', not BPF Compiler Collection",
                      f"pip uninstall bcc; {APT_BCC}")]
    version = getattr(bcc, "__version__", "?")
    return [Check("bcc", True, f"{version} ({os.path.dirname(where)})")]


def check_headers() -> list[Check]:
    user = os.environ.get("BCC_KERNEL_SOURCE")
    if user:
        ok = os.path.isdir(os.path.join(user, "include", "linux"))
        return [Check("kernel headers", ok, f"BCC_KERNEL_SOURCE={user}",
                      None if ok else f"unset BCC_KERNEL_SOURCE or fix it; {kheaders.headers_hint()}")]
    build = kheaders.modules_build()
    if build.is_dir():
        return [Check("kernel headers", True, f"{build} (bcc finds it)")]
    src = kheaders.kernel_source()
    if src is None:
        return [Check("kernel headers", False,
                      f"none for {platform.release()}: no {build}, no headers tree",
                      kheaders.headers_hint())]
    sources = kheaders.tree_sources(Path(src))
    origin = f" from {sources[1].name}" if sources else ""
    return [Check("kernel headers", True,
                  f"{src}{origin} (no {build}; the probes read only uapi layouts)")]


# used when the kernel has them (probes.py compiles them in only then): what happens without
OPTIONAL_TRACEPOINTS = {
    ("sched", "sched_prepare_exec"):
        "kernel < 6.10; a CLONE_FILES sharer's fd table is copied as its exec begins "
        "(sys_enter_execve/execveat) and is its own if the exec succeeds: exact for a "
        "vfork child, a change by another sharer during the exec may be misread",
}


def needed_tracepoints() -> list[tuple[str, str]]:
    """Every (category, event) the tracepoint backend attaches, read from its source."""
    from .backends import tracepoint
    from .probes import bpf_source

    text = bpf_source(tracepoint.SOURCE)
    found = re.findall(r"^\s*TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", text, re.MULTILINE)
    return [tp for tp in found if tp not in OPTIONAL_TRACEPOINTS]


def check_tracepoints() -> list[Check]:
    try:
        wanted = needed_tracepoints()
    except OSError as exc:
        return [Check("bpf program", False, f"cannot read the BPF source: {exc}",
                      "reinstall taptrace")]
    if not wanted:
        return [Check("bpf program", False, "no TRACEPOINT_PROBE found in the BPF source",
                      "reinstall taptrace")]
    tracing = kheaders.ensure_tracefs()
    if tracing is None:
        return [Check("tracepoints", False,
                      f"cannot list tracepoints ({len(wanted)} needed): tracefs not readable",
                      "run as root")]
    checks = []
    for cat, event in wanted:
        present = kheaders.tracepoint_format(cat, event) is not None
        fix = None
        if not present:
            fix = ("kernel without syscall tracepoints: needs CONFIG_FTRACE_SYSCALLS"
                   if cat == "syscalls" else "kernel too old or built without this tracepoint")
        checks.append(Check(f"tracepoint {cat}:{event}", present,
                            "present" if present else f"missing in {tracing}/events", fix))
    for (cat, event), without in OPTIONAL_TRACEPOINTS.items():
        present = kheaders.tracepoint_format(cat, event) is not None
        checks.append(Check(f"tracepoint {cat}:{event}", True,
                            "present" if present else f"absent (optional): {without}"))
    return checks


def check_ringbuf() -> list[Check]:
    from .probes import kernel_at_least

    rel = platform.release()
    if kernel_at_least(5, 8):
        return [Check("ring buffer", True, f"BPF ring buffer (kernel {rel} >= 5.8)")]
    return [Check("ring buffer", True,
                  f"kernel {rel} < 5.8: perf buffer instead (per-CPU, may reorder events)")]


def check_tun() -> list[Check]:
    if not os.path.exists(TUN):
        return [Check("tun", False, f"{TUN} missing",
                      "modprobe tun (or: mkdir -p /dev/net; mknod /dev/net/tun c 10 200)")]
    try:
        os.close(os.open(TUN, os.O_RDWR))
    except OSError as exc:
        return [Check("tun", False, f"{TUN} present but cannot be opened: {exc.strerror}",
                      "run as root" if os.geteuid() != 0 else "modprobe tun")]
    return [Check("tun", True, f"{TUN} opens")]


def check_kprobes() -> list[Check]:
    tracing = kheaders.tracing_dir()
    if tracing is not None and os.path.exists(os.path.join(tracing, "kprobe_events")):
        return [Check("kprobes", True, "available (the kernel backend's tun/tap ioctl hooks)")]
    if tracing is not None and not os.access(tracing, os.R_OK | os.X_OK):
        return [Check("kprobes", True, "unknown (tracefs not readable); backend: tracepoint")]
    return [Check("kprobes", True, "backend: tracepoint (kprobes unavailable)")]


# (name reported if the check itself crashes, check); tracefs before bcc, see above.
CHECKS: tuple[tuple[str, Callable[[], list[Check]]], ...] = (
    ("root", check_root), ("tracefs", check_tracefs), ("bcc", check_bcc),
    ("kernel headers", check_headers), ("tracepoints", check_tracepoints),
    ("ring buffer", check_ringbuf), ("tun", check_tun), ("kprobes", check_kprobes),
)


def _blocking(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok
            and (c.name in REQUIRED or c.name.startswith("tracepoint "))]


def _backend(checks: list[Check]) -> Check:
    blocking = _blocking(checks)
    if blocking:
        return Check("backend", False, f"none: tracing cannot start ({', '.join(blocking)})",
                     "fix the failures above")
    from .backends import AUTO_PREFERS_KERNEL

    buffer = next((c.detail for c in checks if c.name == "ring buffer"), "")
    kind = "perf buffer" if buffer.startswith("kernel") else "ring buffer"
    kernel = next((c.detail for c in checks if c.name == "kernel backend"), "")
    if AUTO_PREFERS_KERNEL and kernel.startswith("loads"):
        hooks = re.search(r"hooks: (\w+)", kernel)
        mode = f" ({hooks.group(1)} hooks)" if hooks else ""
        return Check("backend", True, f"auto: kernel{mode}, {kind}")
    return Check("backend", True, f"auto: tracepoint, {kind}")


def check_load() -> list[Check]:
    """Compile the backend and load it into the kernel for real: only the kernel's
    verifier can say whether this kernel takes our programs."""
    from . import probes
    from .backends.tracepoint import TracepointBackend

    t0 = time.monotonic()
    try:
        p = TracepointBackend(lambda _e: None)
    except probes.ProbeError as exc:
        fix = "report it as a taptrace bug, with the output of TAPTRACE_DEBUG=1 taptrace " \
            "doctor" if "verifier" in str(exc) else kheaders.headers_hint()
        return [Check("bpf load", False, " | ".join((str(exc), *exc.details)), fix)]
    try:
        n = len(needed_tracepoints())
        return [Check("bpf load", True, f"{p.info.name} backend compiled and loaded "
                      f"({n}+ programs, {p.info.buffer}) in {time.monotonic() - t0:.1f} s")]
    finally:
        p.close()


def check_kernel_backend() -> list[Check]:
    """Load the kernel backend for real and say which hooks it chose and why. Not
    required: where it cannot load, the tracepoint backend does the work."""
    from . import probes
    from .backends import AUTO_PREFERS_KERNEL
    from .backends.kernel import KernelBackend

    t0 = time.monotonic()
    try:
        p = KernelBackend(lambda _e: None)
    except probes.ProbeError as exc:
        return [Check("kernel backend", True, f"unavailable: {exc}")]
    try:
        role = "auto picks it" if AUTO_PREFERS_KERNEL else "only with --backend kernel"
        out = [Check("kernel backend", True, f"loads ({role}) in "
                     f"{time.monotonic() - t0:.1f} s; {p.note}")]
        for h in p.hooks():
            out.append(Check(f"hook {h['hook']}", True, f"{h['how']} ({h['why']})"))
        return out
    finally:
        p.close()


def run_checks(load: bool = True) -> list[Check]:
    """Every check; with `load`, the program is compiled and loaded too, once the
    checks it depends on have passed."""
    checks: list[Check] = []
    steps = [*CHECKS, ("bpf load", check_load), ("kernel backend", check_kernel_backend)] \
        if load else list(CHECKS)
    for name, fn in steps:
        if name in ("bpf load", "kernel backend"):
            blocking = _blocking(checks)
            if blocking:
                checks.append(Check(name, False, f"not tried ({', '.join(blocking)} failed)",
                                    "fix the failures above"))
                continue
        try:
            checks.extend(fn())
        except Exception as exc:  # noqa: BLE001 - the doctor reports, it never crashes
            checks.append(Check(name, False, f"check failed: {type(exc).__name__}: {exc}",
                                "please report this as a taptrace bug"))
    checks.append(_backend(checks))
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        if c.fix and not c.ok:
            lines.append(f"     fix: {c.fix}")
    return "\n".join(lines)
