"""Kernel headers and tracefs for bcc, where the machine has neither where bcc looks.

bcc compiles against /lib/modules/$(uname -r)/build. Kernels built elsewhere
(cloud images, microVMs) have no such directory and no distro headers package.
Our probes read only tracepoint arguments and uapi layouts, so the distro's
headers of another version serve. Debian splits them into -common and
-<flavour> directories; bcc wants one tree, so we merge the two into a tree of
symlinks (flavour files win, as `cp -rs common T; cp -rsf flavour/. T` would).

Stdlib only: setup.sh runs this with the system Python before any venv exists
(`python3 -m tracer.kheaders`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import sys
from pathlib import Path

PRIVATE_TREE = "/var/lib/taptrace/kernel-src"
STAMP = ".taptrace-headers"          # names the two source dirs the tree links to
USR_SRC = "/usr/src"
TRACING_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
# bcc (Python) picks its tracing dir at import time and prefers the debugfs one.
DEBUGFS = "/sys/kernel/debug"

_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el",
             "s390x": "s390x", "riscv64": "riscv64"}


def _release() -> str:
    return os.uname().release


def modules_build() -> Path:
    """Where bcc looks for headers by itself."""
    return Path("/lib/modules") / _release() / "build"


def tree_path() -> Path:
    return Path(os.environ.get("TAPTRACE_KERNEL_SOURCE") or PRIVATE_TREE)


def _natural(s: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))


def header_sources(usr_src: str | None = None) -> tuple[Path, Path] | None:
    """The newest (-common, -<flavour>) pair of Debian header dirs, or None."""
    root = Path(usr_src or USR_SRC)
    try:
        commons = sorted((p for p in root.glob("linux-headers-*-common") if p.is_dir()),
                         key=lambda p: _natural(p.name), reverse=True)
    except OSError:
        return None
    arch = _DEB_ARCH.get(platform.machine(), platform.machine())
    for common in commons:
        stem = common.name[: -len("common")]            # "linux-headers-6.1.0-56-"
        flavours = sorted(p for p in root.glob(f"{stem}*") if p != common and p.is_dir())
        # The arch's own flavour first; another of the same version (cloud-amd64) serves too.
        ranked = [p for p in flavours if p.name == f"{stem}{arch}"] + \
            [p for p in flavours if p.name.endswith(f"-{arch}")] + flavours
        if ranked:
            return common, ranked[0]
    return None


def _stamp_text(sources: tuple[Path, Path]) -> str:
    return f"{sources[0]}\n{sources[1]}\n"


def tree_sources(tree: Path) -> tuple[Path, Path] | None:
    """The header dirs a tree we built links to, from its stamp."""
    try:
        lines = (tree / STAMP).read_text().split()
    except OSError:
        return None
    return (Path(lines[0]), Path(lines[1])) if len(lines) == 2 else None


def tree_is_usable(tree: Path) -> bool:
    """bcc needs kconfig.h (from -common) and autoconf.h (from the flavour)."""
    return (tree / "include/linux/kconfig.h").is_file() and \
        (tree / "include/generated/autoconf.h").is_file()


def _link_into(src: Path, dst: Path) -> None:
    """Mirror src into dst as symlinks to src's entries (absolute, so that
    relative links inside src keep resolving); existing entries are replaced."""
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        out = dst / here.relative_to(src)
        if out.is_symlink():
            out.unlink()
        out.mkdir(exist_ok=True)
        # Symlinked dirs (scripts -> ../../lib/linux-kbuild-*) are not walked: link them.
        names = filenames + [d for d in dirnames if (here / d).is_symlink()]
        for name in names:
            target = out / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            target.symlink_to(here / name)


def build_tree(tree: Path, sources: tuple[Path, Path]) -> Path:
    """Build the merged symlink tree beside `tree`, then swap it in (two renames:
    a concurrent reader may miss it for an instant, never see it half built)."""
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = tree.parent / f".{tree.name}.new-{os.getpid()}"
    old = tree.parent / f".{tree.name}.old-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for src in sources:
            _link_into(src, tmp)
        (tmp / STAMP).write_text(_stamp_text(sources))
        if tree.exists() or tree.is_symlink():
            os.rename(tree, old)
        os.rename(tmp, tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return tree


def kernel_source() -> str | None:
    """The headers dir bcc should be pointed at (BCC_KERNEL_SOURCE), or None:
    None when bcc finds /lib/modules/$(uname -r)/build itself, or when no
    headers can be had. Builds the private tree when needed (needs root)."""
    if modules_build().is_dir():
        return None
    tree = tree_path()
    if tree.is_dir() and not (tree / STAMP).exists() and any(tree.iterdir()):
        # A tree we did not make (TAPTRACE_KERNEL_SOURCE): use it, never replace it.
        return str(tree) if tree_is_usable(tree) else None
    sources = header_sources()
    if sources is not None and tree_sources(tree) == sources and tree_is_usable(tree):
        return str(tree)
    if sources is not None:
        try:
            build_tree(tree, sources)
            return str(tree)
        except OSError:
            pass                                 # not root: a stale but whole tree still serves
    return str(tree) if tree_is_usable(tree) else None


def prepare_bcc_env() -> str | None:
    """Point bcc at the headers (before it compiles); returns the dir used, or None
    when bcc is left to its own lookup. A user's BCC_KERNEL_SOURCE is kept."""
    user = os.environ.get("BCC_KERNEL_SOURCE")
    if user:
        return user
    src = kernel_source()
    if src is not None:
        os.environ["BCC_KERNEL_SOURCE"] = src
    return src


def headers_hint() -> str:
    """One line: what to install or run so that bcc has kernel headers."""
    rel = _release()
    if modules_build().is_dir():
        return (f"kernel headers come from {modules_build()}; if they do not match the "
                f"running kernel, install linux-headers-{rel}")
    sources = header_sources()
    if sources is None:
        arch = _DEB_ARCH.get(platform.machine(), platform.machine())
        return (f"no kernel headers: apt-get install linux-headers-{rel} (if apt has none "
                f"for this kernel: linux-headers-{arch}), then run taptrace once as root")
    if not tree_is_usable(tree_path()):
        return (f"headers in {sources[0].parent} are not linked for bcc yet: run taptrace "
                f"(or scripts/setup.sh) once as root to build {tree_path()}")
    return (f"bcc uses {tree_path()} (from {sources[1].name}); "
            f"if compilation fails, set BCC_KERNEL_SOURCE to matching headers")


def _mounts() -> dict[str, str]:
    """mount point -> fs type, from /proc/self/mounts."""
    table: dict[str, str] = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    table[parts[1].replace("\\040", " ")] = parts[2]
    except OSError:
        pass
    return table


def _usable(d: str) -> bool:
    return os.path.isfile(os.path.join(d, "available_events"))


def _mount(fstype: str, target: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    return libc.mount(b"nodev", target.encode(), fstype.encode(), 0, None) == 0


def tracing_dir() -> str | None:
    """A mounted tracefs, without mounting anything. A mount that this user
    cannot read (not root) still counts: it is there."""
    mounts = _mounts()
    for d in TRACING_DIRS:
        if _usable(d) or mounts.get(d) == "tracefs":
            return d
    return None


def ensure_tracefs() -> str | None:
    """Mount debugfs and tracefs where missing (root only; bcc wants
    /sys/kernel/debug/tracing); returns a readable tracing dir, or None."""
    if os.geteuid() == 0:
        mounts = _mounts()
        if mounts.get(DEBUGFS) != "debugfs" and os.path.isdir(DEBUGFS):
            _mount("debugfs", DEBUGFS)
        if mounts.get(TRACING_DIRS[0]) != "tracefs" and os.path.isdir(TRACING_DIRS[0]) \
                and not _usable(TRACING_DIRS[0]):
            _mount("tracefs", TRACING_DIRS[0])
    for d in TRACING_DIRS:
        if _usable(d):           # also triggers the automount under debugfs
            return d
    return None


def tracepoint_format(category: str, event: str) -> str | None:
    """The text of events/<category>/<event>/format, or None if absent/unreadable."""
    if "/" in category or "/" in event or category.startswith(".") or event.startswith("."):
        return None
    ensure_tracefs()
    for d in TRACING_DIRS:
        try:
            with open(os.path.join(d, "events", category, event, "format")) as f:
                return f.read()
        except OSError:
            continue
    return None


def format_has_field(fmt: str, field: str) -> bool:
    """Whether a tracepoint format text declares `field` (arrays included)."""
    pat = re.compile(r"^\s*field:[^;]*[\s*]" + re.escape(field) + r"(\[[^\]]*\])?;", re.MULTILINE)
    return pat.search(fmt) is not None


def has_tracepoint_field(category: str, event: str, field: str) -> bool:
    fmt = tracepoint_format(category, event)
    return fmt is not None and format_has_field(fmt, field)


def main() -> int:
    """`python3 -m tracer.kheaders`: mount tracefs, link headers, say what bcc will use."""
    tracing = ensure_tracefs()
    print(f"tracefs: {tracing or 'not available'}")
    src = prepare_bcc_env()
    if src is not None:
        print(f"kernel headers: {src}")
    elif modules_build().is_dir():
        print(f"kernel headers: {modules_build()}")
    else:
        print(f"kernel headers: none ({headers_hint()})", file=sys.stderr)
        return 1
    return 0 if tracing else 1


if __name__ == "__main__":
    sys.exit(main())
