"""Run a command under a systemd unit's process settings, where no systemd runs (here):
the mount settings (ProtectSystem=strict with its StateDirectory=, PrivateTmp=,
ProtectHome=, PrivateDevices=, ProtectKernelTunables=, ProtectControlGroups=, in a
mount namespace of its own), the syscall filter (SystemCallFilter= expanded by
`systemd-analyze syscall-filter`,
SystemCallErrorNumber=) and MemoryDenyWriteExecute= (the kernel's PR_SET_MDWE, 6.3+:
the same refusal of writable-then-executable memory; not emulated on older kernels,
where systemd uses seccomp rules instead) here; LimitMEMLOCK=, the
capabilities and NoNewPrivileges= by `prlimit` and `setpriv` around this, as a unit
sets them before its ExecStart (unit_command builds the whole command line):

    unshare -m ... unitexec.py --sandbox UNIT -- prlimit ... setpriv ... --
        /usr/bin/python3 tests/unitexec.py UNIT -- CMD [ARGS...]

Needs python3-seccomp (libseccomp's bindings) for the filter.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CAP_SYS_RESOURCE = 24


def has_cap(bit: int) -> bool:
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> bit & 1)


def settings(unit: Path) -> dict[str, list[str]]:
    """[Service] key -> its values, in order (a key given twice adds, as systemd's lists)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def syscall_groups() -> dict[str, list[str]]:
    """Each @group of this systemd and its members (syscalls and @groups)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                          text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(words: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    todo = list(words)
    seen: set[str] = set()
    while todo:
        w = todo.pop()
        if w in seen:
            continue
        seen.add(w)
        if w.startswith("@"):
            todo.extend(groups[w])
        else:
            out.add(w)
    return out


def allowed_syscalls(s: dict[str, list[str]]) -> set[str] | None:
    """The allow list of SystemCallFilter= (None: no filter). Deny lists (~) are not
    emulated: this unit has none."""
    words = [w for v in s.get("SystemCallFilter", []) for w in v.split()]
    if not words:
        return None
    if any(w.startswith("~") for w in words):
        raise SystemExit("unitexec: deny lists (~) are not emulated")
    return expand(words, syscall_groups())


def apply(s: dict[str, list[str]]) -> None:
    if s.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise SystemExit(f"unitexec: PR_SET_MDWE: {os.strerror(err)}")
            # before 6.3 (Debian's 6.1) there is no PR_SET_MDWE: systemd applies
            # MemoryDenyWriteExecute= as seccomp rules on mmap/mprotect there, which
            # this emulation leaves out (the rest of the sandbox still applies)
    allow = allowed_syscalls(s)
    if allow is not None:
        import seccomp  # python3-seccomp
        err = getattr(errno, s.get("SystemCallErrorNumber", ["EPERM"])[-1])
        f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(err))
        for name in sorted(allow):
            try:
                f.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError, OSError):
                pass            # a syscall this libseccomp or arch does not know
        f.load()


# ---- the mount settings (run first, as root, in a private mount namespace) ----

def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _mount_points() -> list[str]:
    """This namespace's mount points, parents first (octal escapes decoded)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp))
    return sorted(set(out), key=lambda p: (p.count("/"), p))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _private_dev() -> None:
    """PrivateDevices=yes: a /dev of its own with the pseudo devices only."""
    staging = tempfile.mkdtemp(prefix="unitexec-dev-", dir="/run")
    try:
        _mount("-t", "tmpfs", "-o", "mode=755,nosuid,noexec", "tmpfs", staging)
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            Path(staging, name).touch()
            _mount("--bind", f"/dev/{name}", f"{staging}/{name}")
        for name in ("shm", "pts"):
            os.mkdir(f"{staging}/{name}")
        _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", f"{staging}/shm")
        if os.path.exists("/dev/log"):
            Path(staging, "log").touch()
            _mount("--bind", "/dev/log", f"{staging}/log")
        _mount("--move", staging, "/dev")
    finally:
        os.rmdir(staging)


def sandbox(s: dict[str, list[str]]) -> None:
    """ProtectSystem=strict (all read-only but /dev, /proc, /sys and the
    StateDirectory), ProtectKernelTunables=/ProtectControlGroups= (/sys and /proc/sys
    read-only), PrivateDevices=, PrivateTmp=, ProtectHome=. Only `remount,bind,ro`:
    a mount's flags in this namespace, never the filesystem's (that would be global)."""
    yes = {k for k, v in s.items() if v[-1] == "yes"}
    if "PrivateDevices" in yes:
        _private_dev()
    if "ProtectKernelTunables" in yes:
        _mount("--bind", "/proc/sys", "/proc/sys")
        _mount("-o", "remount,bind,ro", "/proc/sys")
    if s.get("ProtectSystem", ["no"])[-1] == "strict":
        # the StateDirectory= first becomes a mount of its own, which stays writable
        state = [f"/var/lib/{name}" for name in s.get("StateDirectory", [])]
        for path in state:
            os.makedirs(path, mode=0o700, exist_ok=True)
            _mount("--bind", path, path)
        skip = ["/proc", "/dev", *state] + (
            [] if {"ProtectKernelTunables", "ProtectControlGroups"} & yes else ["/sys"])
        for mp in _mount_points():
            if not any(_under(mp, top) for top in skip):
                subprocess.run(["mount", "-o", "remount,bind,ro", mp], check=False,
                               capture_output=True)   # an nsfs bind may refuse: it is no fs
    if "PrivateTmp" in yes:
        for path in ("/tmp", "/var/tmp"):
            _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", path)
    if "ProtectHome" in yes:
        for path in ("/home", "/root", "/run/user"):
            if os.path.isdir(path):
                _mount("-t", "tmpfs", "-o", "mode=000,ro", "tmpfs", path)


def main(argv: list[str]) -> None:
    mounts = len(argv) > 1 and argv[1] == "--sandbox"
    if mounts:
        argv = argv[1:]
    if len(argv) < 4 or argv[2] != "--":
        raise SystemExit("usage: unitexec.py [--sandbox] UNIT -- CMD [ARGS...]")
    if mounts:
        sandbox(settings(Path(argv[1])))
    else:
        apply(settings(Path(argv[1])))
    os.execvp(argv[3], argv[3:])


def unit_command(unit: Path, cmd: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    """CMD as the unit would run it, from root: a mount namespace of its own with the
    unit's mount settings (unshare, then this script with --sandbox), LimitMEMLOCK=
    (prlimit, while root may still raise it), the capabilities
    (CapabilityBoundingSet=, less `drop`) and NoNewPrivileges= (setpriv), then the
    syscall filter and MemoryDenyWriteExecute= (this script)."""
    s = settings(unit)
    out = ["unshare", "--mount", "--propagation", "private", "--",
           "/usr/bin/python3", __file__, "--sandbox", str(unit), "--"]
    if s.get("LimitMEMLOCK", [""])[-1] == "infinity" and has_cap(CAP_SYS_RESOURCE):
        # (without CAP_SYS_RESOURCE it cannot be raised; BPF on 5.11+ does not need it)
        out += ["prlimit", "--memlock=unlimited:unlimited"]
    caps = [c for v in s.get("CapabilityBoundingSet", []) for c in v.split()]
    keep = [c.removeprefix("CAP_").lower() for c in caps if c not in drop]
    out += ["setpriv", "--bounding-set=-all" + "".join(f",+{c}" for c in keep),
            "--inh-caps=-all"]
    if s.get("NoNewPrivileges", ["no"])[-1] == "yes":
        out.append("--no-new-privs")
    return [*out, "--", "/usr/bin/python3", __file__, str(unit), "--", *cmd]


if __name__ == "__main__":
    main(sys.argv)
