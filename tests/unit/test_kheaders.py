"""Kernel headers, tracefs and the doctor: what bcc needs before it can compile our probes."""

from __future__ import annotations

import ctypes
import fcntl
import os
from pathlib import Path

import pytest

from tracer import doctor, kheaders

SCHED_PROCESS_EXIT = """\
name: sched_process_exit
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: "comm=%s pid=%d group_dead=%s", REC->comm, REC->pid, REC->group_dead
"""


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (tracefs, BPF)")


def fake_headers(usr_src: Path, version: str) -> tuple[Path, Path]:
    """A Debian-style split: -common has the sources, -amd64 the generated config."""
    common = usr_src / f"linux-headers-{version}-common"
    flavour = usr_src / f"linux-headers-{version}-amd64"
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text(f"/* kconfig {version} */\n")
    (common / "include/uapi/linux").mkdir(parents=True)
    (common / "include/uapi/linux/if_tun.h").write_text("/* tun */\n")
    (common / "include/linux/if_tun.h").symlink_to("../uapi/linux/if_tun.h")  # relative
    (common / "Makefile").write_text("common\n")
    (flavour / "include/generated").mkdir(parents=True)
    (flavour / "include/generated/autoconf.h").write_text(f"#define V \"{version}\"\n")
    (flavour / "Makefile").write_text("flavour\n")           # the flavour's wins
    (flavour / "scripts").symlink_to("/nonexistent/linux-kbuild/scripts")
    return common, flavour


@pytest.fixture
def private_tree(tmp_path, monkeypatch):
    """kheaders on a machine with no /lib/modules/<release>/build and our own /usr/src."""
    usr_src = tmp_path / "usr-src"
    usr_src.mkdir()
    tree = tmp_path / "var/kernel-src"
    monkeypatch.setattr(kheaders, "USR_SRC", str(usr_src))
    monkeypatch.setattr(kheaders, "modules_build", lambda: tmp_path / "no-modules/build")
    monkeypatch.setenv("TAPTRACE_KERNEL_SOURCE", str(tree))
    # set, then delete: undoing restores the real value, whatever the test sets.
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    return usr_src, tree


# -- the private headers tree ------------------------------------------------------------

def test_newest_common_with_its_flavour_is_chosen(tmp_path):
    fake_headers(tmp_path, "6.1.0-9")
    fake_headers(tmp_path, "6.1.0-56")
    (tmp_path / "linux-headers-6.1.0-60-common").mkdir()    # no flavour dir: unusable

    common, flavour = kheaders.header_sources(str(tmp_path))

    assert (common.name, flavour.name) == ("linux-headers-6.1.0-56-common",
                                           "linux-headers-6.1.0-56-amd64")


def test_no_headers_means_no_sources(tmp_path):
    assert kheaders.header_sources(str(tmp_path)) is None
    assert kheaders.header_sources(str(tmp_path / "absent")) is None


def test_tree_merges_common_and_flavour_as_symlinks(private_tree):
    usr_src, tree = private_tree
    common, flavour = fake_headers(usr_src, "6.1.0-56")

    assert kheaders.kernel_source() == str(tree)

    assert (tree / "include/linux/kconfig.h").read_text() == "/* kconfig 6.1.0-56 */\n"
    assert (tree / "include/generated/autoconf.h").is_file()
    assert (tree / "include/linux/if_tun.h").read_text() == "/* tun */\n"   # relative link
    assert (tree / "Makefile").read_text() == "flavour\n"
    assert os.readlink(tree / "scripts") == str(flavour / "scripts")
    assert (tree / "include/linux").is_dir() and not (tree / "include/linux").is_symlink()
    assert kheaders.tree_sources(tree) == (common, flavour)


def test_fresh_tree_is_reused_and_stale_tree_rebuilt(private_tree):
    usr_src, tree = private_tree
    fake_headers(usr_src, "6.1.0-9")
    kheaders.kernel_source()
    inode = (tree / "include").stat().st_ino

    kheaders.kernel_source()
    assert (tree / "include").stat().st_ino == inode            # fresh: untouched

    fake_headers(usr_src, "6.1.0-56")                            # an upgrade arrives
    assert kheaders.kernel_source() == str(tree)
    assert "6.1.0-56" in (tree / "include/generated/autoconf.h").read_text()
    assert not list(tree.parent.glob(".kernel-src.*"))           # no leftovers


def test_a_tree_we_did_not_make_is_used_and_never_replaced(private_tree):
    usr_src, tree = private_tree
    fake_headers(usr_src, "6.1.0-56")
    (tree / "include/linux").mkdir(parents=True)
    (tree / "include/linux/kconfig.h").write_text("mine\n")
    (tree / "include/generated").mkdir()
    (tree / "include/generated/autoconf.h").write_text("mine\n")

    assert kheaders.kernel_source() == str(tree)
    assert (tree / "include/linux/kconfig.h").read_text() == "mine\n"


def test_no_headers_anywhere_gives_none_and_a_hint(private_tree):
    assert kheaders.kernel_source() is None
    assert kheaders.prepare_bcc_env() is None
    assert "BCC_KERNEL_SOURCE" not in os.environ
    assert "apt-get install linux-headers-" in kheaders.headers_hint()


def test_prepare_bcc_env_points_bcc_at_the_tree(private_tree):
    usr_src, tree = private_tree
    fake_headers(usr_src, "6.1.0-56")

    assert kheaders.prepare_bcc_env() == str(tree)
    assert os.environ["BCC_KERNEL_SOURCE"] == str(tree)


def test_prepare_bcc_env_keeps_the_users_choice(private_tree, monkeypatch):
    usr_src, _ = private_tree
    fake_headers(usr_src, "6.1.0-56")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/opt/my-headers")

    assert kheaders.prepare_bcc_env() == "/opt/my-headers"
    assert os.environ["BCC_KERNEL_SOURCE"] == "/opt/my-headers"


def test_kernel_source_on_this_machine_is_a_real_headers_dir():
    src = kheaders.kernel_source()
    if src is None:
        # Only right when bcc finds headers itself, or when we may not build the tree.
        assert kheaders.modules_build().is_dir() or os.geteuid() != 0, kheaders.headers_hint()
    else:
        assert (Path(src) / "include/linux").is_dir()
        assert kheaders.tree_is_usable(Path(src))


# -- tracepoint formats -------------------------------------------------------------------

def test_format_fields_are_found_by_name():
    assert kheaders.format_has_field(SCHED_PROCESS_EXIT, "group_dead")
    assert kheaders.format_has_field(SCHED_PROCESS_EXIT, "comm")             # an array
    assert kheaders.format_has_field(SCHED_PROCESS_EXIT, "pid")
    assert not kheaders.format_has_field(SCHED_PROCESS_EXIT, "dead")          # no substrings
    assert not kheaders.format_has_field(SCHED_PROCESS_EXIT, "REC")


def test_live_ioctl_tracepoint_has_cmd():
    need_root()
    assert kheaders.ensure_tracefs() is not None

    fmt = kheaders.tracepoint_format("syscalls", "sys_enter_ioctl")

    assert fmt is not None and "cmd" in fmt
    assert kheaders.has_tracepoint_field("syscalls", "sys_enter_ioctl", "cmd")
    assert not kheaders.has_tracepoint_field("syscalls", "sys_enter_ioctl", "no_such_field")
    assert kheaders.tracepoint_format("syscalls", "sys_enter_no_such_call") is None
    assert kheaders.tracepoint_format("..", "syscalls") is None


def test_bcc_compiles_and_runs_a_tracepoint_probe_with_these_headers():
    need_root()
    assert kheaders.ensure_tracefs() is not None      # before bcc import: it picks its dir then
    kheaders.prepare_bcc_env()
    bcc = pytest.importorskip("bcc")
    magic = 0x7474EE01
    prog = b"""
    BPF_ARRAY(hits, u64, 1);
    TRACEPOINT_PROBE(syscalls, sys_enter_ioctl) {
        if ((bpf_get_current_pid_tgid() >> 32) != TGID || args->cmd != MAGIC)
            return 0;
        int k = 0;
        u64 *v = hits.lookup(&k);
        if (v)
            __sync_fetch_and_add(v, 1);
        return 0;
    }
    """
    b = bcc.BPF(text=prog, cflags=[f"-DTGID={os.getpid()}", f"-DMAGIC={magic}"])
    try:
        fd = os.open("/dev/null", os.O_RDONLY)
        for _ in range(3):
            with pytest.raises(OSError):
                fcntl.ioctl(fd, magic)
        os.close(fd)
        assert b[b"hits"][ctypes.c_int(0)].value == 3
    finally:
        b.cleanup()


# -- the doctor ---------------------------------------------------------------------------

def test_doctor_reports_every_area_and_ends_with_the_backend():
    checks = doctor.run_checks()

    assert all(isinstance(c, doctor.Check) for c in checks)
    names = [c.name for c in checks]
    for area in ("root", "tracefs", "bcc", "kernel headers", "ring buffer", "tun", "kprobes"):
        assert area in names
    assert names[-1] == "backend"
    assert all(c.fix for c in checks if not c.ok)


def test_doctor_checks_each_tracepoint_the_program_attaches():
    need_root()
    wanted = doctor.needed_tracepoints()
    assert ("syscalls", "sys_exit_ioctl") in wanted
    assert ("sched", "sched_process_fork") in wanted

    names = {c.name: c for c in doctor.run_checks()}

    for cat, event in wanted:
        assert names[f"tracepoint {cat}:{event}"].ok
    assert names["backend"].ok, doctor.format_checks(list(names.values()))


def test_doctor_survives_a_check_that_crashes(monkeypatch):
    def boom():
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(doctor, "CHECKS",
                        tuple((n, boom if n == "tun" else f) for n, f in doctor.CHECKS))

    checks = doctor.run_checks()

    tun = next(c for c in checks if c.name == "tun")
    assert not tun.ok and "disk on fire" in tun.detail


def test_doctor_names_the_pypi_impostor(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, "bcc", types.ModuleType("bcc"))    # no BPF attribute

    (check,) = doctor.check_bcc()

    assert not check.ok and "PyPI" in check.detail and "python3-bpfcc" in check.fix


def test_doctor_text_is_one_line_per_check_with_fixes_indented():
    checks = [doctor.Check("root", True, "euid 0", None),
              doctor.Check("tun", False, "/dev/net/tun missing", "modprobe tun")]

    assert doctor.format_checks(checks) == (
        "ok   root: euid 0\n"
        "FAIL tun: /dev/net/tun missing\n"
        "     fix: modprobe tun")
