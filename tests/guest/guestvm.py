#!/usr/bin/python3
"""Boot a stock Debian kernel under QEMU (TCG) on this machine's root filesystem and
run one command in it: the tool behind `make test-guest` and the guest smoke tests.

The guest sees the host's `/` read-only over 9p, under a tmpfs overlay (so it can
write anywhere, and nothing reaches the host), mounts its own proc/sys/dev/tracefs/
bpffs, loads tun/tap/macvtap/vhost-net, runs the command in the same directory the
host called from, and powers off. The command's output streams to our stdout over
a second serial port; its exit status and any files it writes under $TT_OUT (a
writable 9p share) come back. The kernel's own console goes to console.log there.

Why this shape (measured, see ../shared/GUEST-VM.md): /dev/kvm here is paravirtual
and stock kernels crawl on it, so TCG; booting the uncompressed vmlinux through its
PVH entry skips the guest-side decompression; a busybox initramfs with the handful
of 9p/virtio modules the kernel has as modules is all the guest needs of its own.

Stdlib only. Usage:
    guestvm.py [--kernel SERIES|RELEASE] [--install] [--timeout S] -- CMD [ARGS...]
    guestvm.py --pytest [--kernel K]... [--install] -- [PYTEST ARGS]   (the matrix)
    guestvm.py --install [--kernel K]...
    guestvm.py --list
Exit status: the command's, or 124 on timeout, 125 when the guest could not run it.
"""

from __future__ import annotations

import argparse
import codecs
import lzma
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STAGE2 = HERE / "stage2.sh"
CACHE = Path(os.environ.get("TAPTRACE_GUEST_CACHE", "/var/cache/taptrace-guest"))
# What the initramfs loads to reach the host root (modules on Debian's kernels).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# Debian packages per series: the newest kernel of each, with its headers (bcc).
SERIES_PACKAGES = {
    "6.1": ("linux-image-amd64", "linux-headers-amd64"),
    "6.12": ("linux-image-6.12-amd64", "linux-headers-6.12-amd64"),
}
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "zstd", "kmod")
DEFAULT_SERIES = ("6.1", "6.12")
EXIT_TIMEOUT, EXIT_NOGUEST = 124, 125


class GuestError(Exception):
    """The guest could not be made or booted (one line)."""


def _natural(s: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))


def installed_kernels() -> list[str]:
    """Debian amd64 kernel releases with an image and headers (bcc needs both)."""
    out = []
    for img in Path("/boot").glob("vmlinuz-*-amd64"):
        rel = img.name[len("vmlinuz-"):]
        if (Path("/lib/modules") / rel / "build" / "Makefile").exists():
            out.append(rel)
    return sorted(out, key=_natural)


def series_of(release: str) -> str:
    m = re.match(r"(\d+\.\d+)", release)
    return m.group(1) if m else release


def resolve(kernel: str) -> str:
    """A series ("6.1") names its newest installed release; a release names itself."""
    have = installed_kernels()
    if kernel in have:
        return kernel
    match = [r for r in have if series_of(r) == kernel]
    if not match:
        raise GuestError(f"no installed Debian kernel {kernel} with headers "
                         f"(have: {', '.join(have) or 'none'}); try --install")
    return match[-1]


def install(series: list[str]) -> None:
    """apt-get the host tools and each series' kernel image and headers."""
    pkgs = list(HOST_PACKAGES)
    for s in series:
        if s not in SERIES_PACKAGES:
            if not any(series_of(r) == s or r == s for r in installed_kernels()):
                raise GuestError(f"cannot install kernel {s}: known series are "
                                 f"{', '.join(SERIES_PACKAGES)}")
            continue
        pkgs += SERIES_PACKAGES[s]
    missing = [p for p in pkgs if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
    ).stdout != "install ok installed"]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"guest: apt-get install {' '.join(missing)}", file=sys.stderr, flush=True)
    for cmd in (["apt-get", "-q", "-o", "DPkg::Lock::Timeout=600", "update"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                 "-o", "DPkg::Lock::Timeout=600", *missing]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if r.returncode:
            sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
            raise GuestError(f"{' '.join(cmd[:2])} failed (exit {r.returncode})")


# ---- kernel and initramfs ---------------------------------------------------

def vmlinux(release: str) -> Path:
    """The uncompressed ELF inside /boot/vmlinuz-RELEASE (XZ on 6.1, zstd on 6.12),
    cached: QEMU boots it through its PVH note, with no decompression in the guest."""
    out = CACHE / f"vmlinux-{release}"
    src = Path(f"/boot/vmlinuz-{release}")
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    blob = src.read_bytes()
    elf = None
    pos = blob.find(b"\xfd7zXZ\x00")
    if pos >= 0:
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = d.decompress(blob[pos:])
        except lzma.LZMAError:
            elf = None
    pos = blob.find(b"\x28\xb5\x2f\xfd")
    if elf is None and pos >= 0:
        r = subprocess.run(["zstd", "-dcq"], input=blob[pos:], capture_output=True, check=False)
        elf = r.stdout or None          # trailing bytes make zstd complain after the frame
    if not elf or elf[:4] != b"\x7fELF":
        raise GuestError(f"could not extract an ELF kernel from {src}")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.replace(out)
    return out


def _module_files(release: str) -> list[Path]:
    """The .ko files BOOT_MODULES need, dependencies first, each once."""
    seen: list[Path] = []
    for mod in BOOT_MODULES:
        r = subprocess.run(["modprobe", "--show-depends", "-S", release, mod],
                           capture_output=True, text=True, check=False)
        if r.returncode:
            raise GuestError(f"modprobe --show-depends {mod} for {release}: {r.stderr.strip()}")
        for line in r.stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"] and Path(parts[1]) not in seen:
                seen.append(Path(parts[1]))       # "builtin X" lines need nothing
    return seen


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        nm = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0))
        out += hdr.encode() + nm
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _unpack_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dcq"], input=data, capture_output=True,
                              check=True).stdout
    return data


INIT = r"""#!/bin/busybox sh
# Stage 1: load the 9p modules, mount the host root under a tmpfs overlay,
# move the out share into it, and hand over to stage 2 (from the host root).
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules); do insmod "/mod/$m" || echo "stage1: insmod $m failed"; done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /lower \
    || { echo "stage1: cannot mount the host root"; poweroff -f; }
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot \
    || { echo "stage1: overlay failed"; poweroff -f; }
mkdir -p /newroot/tt-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /newroot/tt-out
stage2=$(sed -n 's/.*tt.stage2=\([^ ]*\).*/\1/p' /proc/cmdline)
for d in proc sys dev; do mount --move /$d /newroot/$d; done
exec switch_root /newroot /bin/bash "$stage2"
"""


def initramfs(release: str) -> Path:
    """A cached busybox initramfs that reaches the host root (see INIT)."""
    out = CACHE / f"initramfs-{release}.cpio"
    if out.exists() and out.stat().st_mtime >= Path(__file__).stat().st_mtime:
        return out
    busybox = shutil.which("busybox")
    if not busybox:
        raise GuestError("busybox is missing: apt-get install busybox-static")
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "mod")]
    entries.append(("bin/busybox", 0o100755, Path(busybox).read_bytes()))
    names = []
    for ko in _module_files(release):
        name = ko.name.split(".ko")[0] + ".ko"
        names.append(name)
        entries.append((f"mod/{name}", 0o100644, _unpack_module(ko)))
    entries.append(("modules", 0o100644, ("\n".join(names) + "\n").encode()))
    entries.append(("init", 0o100755, INIT.encode()))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(_cpio(entries))
    tmp.replace(out)
    return out


# ---- running ------------------------------------------------------------------


def run(release: str, command: list[str], *, out_dir: Path | None = None, timeout: float = 1800,
        memory: str = "2G", cpus: int = 2, stream=sys.stdout) -> int:
    """Boot RELEASE, run COMMAND in the guest from the current directory, stream its
    output to STREAM, and return its exit status (EXIT_TIMEOUT, EXIT_NOGUEST)."""
    kernel, initrd = vmlinux(release), initramfs(release)
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise GuestError("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    own = out_dir is None
    out = Path(tempfile.mkdtemp(prefix="tt-guest-")) if own else out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "rc").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(("TAPTRACE_", "PYTEST_"))}
    # TCG runs a stock kernel several times slower than this machine (GUEST-VM.md)
    env.setdefault("TAPTRACE_TEST_SLOWDOWN", "4")
    env_lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    (out / "cwd").write_text(os.getcwd())
    (out / "cmd").write_text(f"{env_lines}cd {shlex.quote(os.getcwd())} || exit 125\n"
                             f"exec {shlex.join(command)}\n")
    append = (f"console=ttyS0 loglevel=4 panic=-1 mitigations=off "
              f"tt.stage2={STAGE2}")
    # thread=single: with one host thread per vCPU (multi), the 6.12 guest once took
    # an int3 oops in syscall_trace_enter while tracepoints were being patched in
    # (a vCPU ran code another had just rewritten); one thread runs the vCPUs in turn
    argv = [qemu, "-accel", "tcg,thread=single", "-cpu", "qemu64", "-smp", str(cpus),
            "-m", memory, "-nodefaults", "-display", "none", "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-fsdev", "local,id=root,path=/,readonly=on,security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
            "-fsdev", f"local,id=out,path={out},security_model=none",
            "-device", "virtio-9p-pci,fsdev=out,mount_tag=out",
            "-chardev", f"file,id=con,path={out / 'console.log'}", "-serial", "chardev:con",
            "-chardev", "stdio,id=io,signal=off", "-serial", "chardev:io"]
    started = time.monotonic()
    # setpriv: QEMU gets SIGKILL if we die (killed, a test's timeout): no guest runs
    # on unowned
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    timed_out = False
    text = codecs.getincrementaldecoder("utf-8")("replace")   # chunks split characters
    try:
        fd = proc.stdout.fileno()
        while True:
            left = started + timeout - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], min(left, 5))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            stream.write(text.decode(chunk.replace(b"\r\n", b"\n")))
            stream.flush()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    try:
        if timed_out:
            return EXIT_TIMEOUT
        try:
            return int((out / "rc").read_text().strip())
        except (OSError, ValueError):
            tail = (out / "console.log").read_text(errors="replace")[-2000:] \
                if (out / "console.log").exists() else ""
            stream.write(f"guest: no exit status came back; kernel console ends:\n{tail}\n")
            return EXIT_NOGUEST
    finally:
        if own:
            shutil.rmtree(out, ignore_errors=True)


# ---- pytest in the guest ---------------------------------------------------------

@dataclass
class Outcome:
    """One kernel's pytest run in the guest."""
    release: str
    rc: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)   # passed, failed, skipped...
    failures: list[str] = field(default_factory=list)      # "test id: first line"
    skips: list[str] = field(default_factory=list)         # "test id: reason"

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures and self.counts.get("passed", 0) > 0

    def summary(self) -> str:
        parts = ", ".join(f"{n} {k}" for k, n in self.counts.items() if n)
        return f"{self.release}: {'PASS' if self.ok else 'FAIL'} ({parts or 'no tests'}; " \
               f"exit {self.rc}; {self.seconds:.0f} s)"


def _junit(path: Path) -> tuple[dict[str, int], list[str], list[str]]:
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "xfailed": 0}
    failures: list[str] = []
    skips: list[str] = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts, ["pytest wrote no readable junit report"], skips
    for case in root.iter("testcase"):
        tid = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag: child for child in case}
        if "failure" in kinds or "error" in kinds:
            bad = kinds.get("failure", kinds.get("error"))
            counts["failed" if "failure" in kinds else "error"] += 1
            first = (bad.get("message") or "").strip().splitlines()[:1]
            failures.append(f"{tid}: {first[0][:300] if first else '?'}")
        elif "skipped" in kinds:
            xfail = kinds["skipped"].get("type") == "pytest.xfail"
            counts["xfailed" if xfail else "skipped"] += 1
            if not xfail:
                skips.append(f"{tid}: {kinds['skipped'].get('message') or '?'}")
        else:
            counts["passed"] += 1
    return counts, failures, skips


def run_pytest(release: str, pytest_args: list[str], *, timeout: float = 3600,
               stream=sys.stdout) -> Outcome:
    """This checkout's pytest, with PYTEST_ARGS, in a guest running RELEASE."""
    python = REPO / ".venv" / "bin" / "python"
    if not python.exists():
        raise GuestError(f"{python} is missing: run `make setup` (or scripts/setup.sh) first")
    with tempfile.TemporaryDirectory(prefix="tt-guest-") as tmp:
        out = Path(tmp)
        t0 = time.monotonic()
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            rc = run(release, [str(python), "-m", "pytest", "-p", "no:cacheprovider",
                               "-rfEsx", "--junitxml=/tt-out/junit.xml", *pytest_args],
                     out_dir=out, timeout=timeout, stream=stream)
        finally:
            os.chdir(cwd)
        counts, failures, skips = _junit(out / "junit.xml")
        return Outcome(release, rc, time.monotonic() - t0, counts, failures, skips)


def matrix(kernels: list[str], pytest_args: list[str], timeout: float) -> int:
    """One boot per kernel running PYTEST_ARGS; a summary line each; 0 only if all pass."""
    outcomes = []
    for k in kernels:
        release = resolve(k)
        print(f"\n===== guest {release}: pytest {' '.join(pytest_args)}", flush=True)
        outcomes.append(run_pytest(release, pytest_args, timeout=timeout))
    print("\n===== guest matrix")
    for o in outcomes:
        print(o.summary())
        for f in o.failures:
            print(f"    {f}")
    return 0 if all(o.ok for o in outcomes) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", action="append",
                    help="series (6.1, 6.12) or release; repeat for several "
                         f"(default: {' '.join(DEFAULT_SERIES)} with --pytest, else 6.1)")
    ap.add_argument("--install", action="store_true",
                    help="apt-get the kernels, their headers and the host tools first")
    ap.add_argument("--pytest", action="store_true",
                    help="run this checkout's pytest with ARGS in each kernel (the matrix)")
    ap.add_argument("--timeout", type=float, default=3600, help="per boot, seconds")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", type=Path, help="keep the guest's out share here")
    ap.add_argument("--list", action="store_true", help="installed kernels, then exit")
    ap.add_argument("command", nargs="*", help="the command (or, with --pytest, its args)")
    a = ap.parse_args()
    kernels = a.kernel or (list(DEFAULT_SERIES) if a.pytest or a.install else ["6.1"])
    try:
        if a.install:
            install(kernels)
        if a.list:
            print("\n".join(installed_kernels()))
            return 0
        if a.pytest:
            return matrix(kernels, a.command or ["tests/integration"], a.timeout)
        if not a.command:
            if a.install:
                return 0
            ap.error("a command to run in the guest is needed (after --)")
        if len(kernels) != 1:
            ap.error("one --kernel for a command (use --pytest for a matrix)")
        release = resolve(kernels[0])
        t0 = time.monotonic()
        rc = run(release, a.command, out_dir=a.out, timeout=a.timeout, memory=a.memory,
                 cpus=a.cpus)
        print(f"guest: {release}: exit {rc} after {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
        return rc
    except GuestError as exc:
        print(f"guest: error: {exc}", file=sys.stderr)
        return EXIT_NOGUEST


if __name__ == "__main__":
    sys.exit(main())
