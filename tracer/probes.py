"""What the BPF backends share: loading a program with bcc (and saying in one line
why it failed), the output buffer, counters and interest set (BccBackend).

The backends themselves are tracer/backends/: one module per backend, one
bpf/*.bpf.c each. This is the only module that imports bcc. Everything it hands
out is a typed record from tracer.events.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import events as ev
from . import kheaders


def _bpf_dir() -> Path:
    """tracer/bpf where taptrace is installed (pyproject.toml), else the checkout's bpf/."""
    here = Path(__file__).resolve().parent
    installed = here / "bpf"
    return installed if (installed / "events.h").is_file() else here.parent / "bpf"


BPF_DIR = _bpf_dir()


def bpf_source(name: str) -> str:
    """A backend's BPF source with the headers of bpf/ it includes written in place:
    bcc makes the argument structs of TRACEPOINT_PROBEs (sched.h's) only for
    probes in the text it is given, not in included files."""
    def expand(m: re.Match) -> str:
        path = BPF_DIR / m.group(1)
        return bpf_source(m.group(1)) if path.is_file() else m.group(0)

    text = (BPF_DIR / name).read_text()
    return re.sub(r'^#include "([\w.]+)"$', expand, text, flags=re.MULTILINE)


@contextlib.contextmanager
def _captured_output():
    """Collect what the C side (clang, libbcc) writes to fds 1 and 2 while compiling:
    it is noise unless compiling fails, and then the first error line is the news."""
    buf = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            ctypes.CDLL(None).fflush(None)   # C stdio buffers hold some of it
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            buf.write(tmp.read().decode("utf-8", "replace"))
            if os.environ.get("TAPTRACE_DEBUG"):
                sys.stderr.write(buf.getvalue())


class ProbeError(Exception):
    """One line saying what is wrong and what to do; `details`, a few lines of
    evidence worth showing under it (the verifier's last words)."""

    def __init__(self, message: str, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.details = details


_LOAD_FAILED = re.compile(r"Failed to load BPF program b?'?(\w+)'?: (.+)")
_ATTACH_FAILED = re.compile(r"Failed to attach BPF program b?'?(\w+)'? to \w+ b?'?([\w:]+)'?")
_INSN_LINE = re.compile(r"^\d+: ")
_REFUSED = re.compile(r"bpf: Failed to load program: (.+)")


def _last_error_line(output: str) -> str:
    """libbcc's own last word (e.g. "ioctl(PERF_EVENT_IOC_SET_BPF): Permission denied")."""
    lines = [ln.strip() for ln in output.splitlines()
             if ln.strip() and "warning" not in ln and not ln.startswith((" ", "\t"))]
    return lines[-1] if lines else ""


def load_error(message: str, output: str, source: str | None) -> ProbeError:
    """What bcc's failure was, in one line: the kernel's verifier refusing one of
    our programs (a taptrace bug on this kernel, whatever the headers), or clang
    failing to compile (a headers problem)."""
    m = _LOAD_FAILED.search(message)
    if m:
        name, why = m.groups()
        log = output[output.find("bpf: Failed to load program"):].splitlines()[1:]
        words = [ln.strip() for ln in log if ln.strip() and not _INSN_LINE.match(ln)]
        last = next((w for w in reversed(words) if not w.startswith("processed ")), why)
        return ProbeError(
            f"the kernel's verifier rejected BPF program {name} on Linux "
            f"{platform.release()}: {last} ({why}); this is a taptrace bug on this "
            f"kernel: please report it with the output of TAPTRACE_DEBUG=1 taptrace doctor",
            tuple(words[-4:]))
    m = _ATTACH_FAILED.search(message)
    if m:
        return ProbeError(f"the kernel refused to attach BPF program {m.group(1)} to "
                          f"{m.group(2)} on Linux {platform.release()}: "
                          f"{_last_error_line(output) or 'no reason given'}")
    m = _REFUSED.search(output)
    if m:        # compiled, then refused as a whole (no verifier log): fentry not allowed
        return ProbeError(f"the kernel refused to load the BPF programs on Linux "
                          f"{platform.release()}: {m.group(1).strip()} (lockdown, or a "
                          f"kernel that does not allow this kind of program)")
    lines = output.splitlines()
    first = next((ln for ln in lines if "error:" in ln.lower()), "") or \
        next((ln for ln in lines if any(w in ln.lower() for w in (
            "unable", "invalid", "failed"))), "") or message
    first = first.strip().split(". ")[0]
    where = f"headers at {source}" if source else "the headers bcc found"
    hint = kheaders.headers_hint() if os.environ.get("BCC_KERNEL_SOURCE") in (
        None, kheaders.kernel_source()) else "unset BCC_KERNEL_SOURCE or point it at " \
        "kernel headers"
    return ProbeError(f"could not compile the BPF program against {where}"
                      f"{': ' + first[:160] if first else ''}; {hint}")


@dataclass(frozen=True)
class BackendInfo:
    name: str            # "tracepoint" or "kernel"
    buffer: str          # "ringbuf" or "perf"
    buffer_pages: int
    kernel_source: str | None
    hooks: str | None = None   # the kernel backend's hook mode: "fentry" or "kprobe"


MADV_PAGEOUT = 21          # Linux 5.4+


def _shed_compiler_memory() -> None:
    """Give back what compiling the program left behind: clang/LLVM's freed heap
    (malloc_trim) and the pages of their libraries (MADV_PAGEOUT: clean file pages
    are dropped and fault back in if ever used again). A tracer that runs for days
    should not keep a compiler resident."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split()
                if len(parts) >= 6 and ("libLLVM" in parts[5] or "libclang" in parts[5]):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    libc.madvise(start, end - start, MADV_PAGEOUT)
    except (OSError, AttributeError, ValueError):
        pass                   # not glibc, or no /proc: only memory is at stake


def kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _import_bcc():
    try:
        import bcc
    except ImportError as exc:
        raise ProbeError(
            "bcc is not installed: apt-get install python3-bpfcc "
            "(and run taptrace with a Python that sees /usr/lib/python3/dist-packages)"
        ) from exc
    if not hasattr(bcc, "BPF"):
        raise ProbeError(
            "the 'bcc' module found is not BPF Compiler Collection (the PyPI 'bcc' is an "
            "unrelated package): pip uninstall bcc; apt-get install python3-bpfcc"
        )
    return bcc


def load_bpf(bcc, text: str, cflags: list[str], source: str | None):
    """bcc.BPF(text), its compiler noise captured; a failure as one ProbeError."""
    with _captured_output() as noise:
        try:
            return bcc.BPF(text=text, cflags=cflags)
        except Exception as exc:  # noqa: BLE001 - bcc raises a bare Exception on failure
            error = exc
    raise load_error(str(error), noise.getvalue(), source)


class BccBackend:
    """What every bcc backend shares: checks, compiling and loading its program (one
    .bpf.c in bpf/), the output buffer, the counters and the interest set. A backend
    says which program and flags (`_program`), attaches what bcc does not attach by
    itself (`_attach`), and may turn its raw records into model events its own way
    (`_record`, `_flush`). poll() delivers typed records from tracer.events."""

    name = ""

    def __init__(self, on_event: Callable[[ev.Event], None], buffer_pages: int = 256,
                 force_perf: bool = False) -> None:
        if platform.machine() != "x86_64":
            raise ProbeError(f"the {self.name} backend reads x86-64 pt_regs; "
                             f"{platform.machine()} is not supported yet")
        if buffer_pages < 1 or buffer_pages & (buffer_pages - 1):
            raise ProbeError(f"--buffer-pages must be a power of two, got {buffer_pages}")
        if os.geteuid() != 0:
            raise ProbeError("tracing needs root (CAP_BPF and CAP_PERFMON); "
                             "`taptrace ls` works without")
        if kheaders.ensure_tracefs() is None:
            raise ProbeError("tracefs is not mounted and could not be mounted: "
                             "mount -t tracefs nodev /sys/kernel/tracing")
        text, extra = self._program()          # before bcc: a plan that cannot work
        source = kheaders.prepare_bcc_env()    # fails fast, without compiling
        bcc = _import_bcc()
        ringbuf = kernel_at_least(5, 8) and not force_perf
        cflags = [f"-I{BPF_DIR}", f"-DTT_RING_PAGES={buffer_pages}", "-Wno-unused-function",
                  f"-DTT_SELF_TGID={os.getpid()}", *extra]
        if ringbuf:
            cflags.append("-DTT_RINGBUF")
        self._bpf = load_bpf(bcc, text, cflags, source)
        try:
            self._attach()
        except BaseException:
            self._bpf.cleanup()
            raise
        self.info = BackendInfo(self.name, "ringbuf" if ringbuf else "perf", buffer_pages,
                                source)
        self._on_event = on_event
        self._sends_read = self._sends_settled = 0
        self._counters = self._bpf["counters"]
        self._interest = self._bpf["interest"]

        def _raw(_ctx, data, size):
            self._record(ctypes.string_at(data, size))

        self._raw = _raw  # keep a reference: bcc holds only a C callback
        if ringbuf:
            self._bpf["events"].open_ring_buffer(_raw)
        else:
            def _lost(lost):
                self._perf_lost += lost
            self._perf_lost = 0
            self._bpf["events"].open_perf_buffer(_raw, page_cnt=buffer_pages, lost_cb=_lost)
        self._ringbuf = ringbuf
        _shed_compiler_memory()

    # ---- what a backend provides ---------------------------------------------

    def _program(self) -> tuple[str, list[str]]:
        """The BPF source text and the cflags it needs on this kernel."""
        raise NotImplementedError

    def _attach(self) -> None:
        """Attach what bcc does not attach by itself (kprobes picked at start)."""

    def _record(self, raw: bytes) -> None:
        rec = ev.decode(raw)
        if rec is not None:
            if isinstance(rec, ev.ScmSend):
                self._sends_read += 1        # as the program counts them (scm_settled)
            self._on_event(rec)

    def _flush(self) -> None:
        """Deliver what _record held back (a record that several raw ones make)."""

    # ---- the interface the session uses --------------------------------------

    def poll(self, timeout_ms: int) -> None:
        if self._ringbuf:
            self._bpf.ring_buffer_poll(timeout_ms)
        else:
            self._bpf.perf_buffer_poll(timeout_ms)
        self._flush()

    def counter(self, idx: int) -> int:
        return int(self._counters[ctypes.c_int(idx)].value)

    def lost(self) -> int:
        """Records dropped so far (buffer full, or interest set full)."""
        total = self.counter(ev.C_LOST) + self.counter(ev.C_INTEREST_FULL)
        if not self._ringbuf:
            total += self._perf_lost
        return total

    def scm_settled(self) -> None:
        """Every SCM_RIGHTS send read so far has no file left in flight: receives
        need not be parsed until the next send (bpf/tracepoint.bpf.c, scm_armed)."""
        if self._sends_read != self._sends_settled:
            self._sends_settled = self._sends_read
            self._counters[ctypes.c_int(ev.C_SCM_SETTLED)] = ctypes.c_ulonglong(
                self._sends_read)

    def set_interest(self, pids: Iterable[int]) -> None:
        """Add processes to the in-kernel interest set (they hold tracked fds)."""
        table = self._interest
        for pid in pids:
            table[ctypes.c_uint(pid)] = ctypes.c_uint(1)

    def drop_interest(self, pid: int) -> None:
        try:
            del self._interest[ctypes.c_uint(pid)]
        except KeyError:
            pass

    def interest(self) -> set[int]:
        return {k.value for k in self._interest}

    def hooks(self) -> list[dict]:
        """What this backend attached, and why that way (for doctor)."""
        return []

    def close(self) -> None:
        self._bpf.cleanup()
