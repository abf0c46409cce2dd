"""tracer.btf against real BTF: this machine's kernel and the .BTF sections of Debian's
6.1 and 6.12 images the guest tests boot. The expected offsets are the measured truth
(pahole on the same images), not header values: `struct file.f_op` moved from 40 to 16."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tracer import btf

CACHE = Path("/var/cache/taptrace-guest")
HOST = Path("/sys/kernel/btf/vmlinux")


def image(series: str) -> Path:
    found = sorted(CACHE.glob(f"vmlinux-{series}.*-amd64"))
    if not found:
        pytest.skip(f"no Debian {series} vmlinux in {CACHE} (tests/guest/guestvm.py --install)")
    return found[-1]


@pytest.fixture(scope="module")
def k61() -> btf.Btf:
    return btf.from_file(image("6.1"))


@pytest.fixture(scope="module")
def k612() -> btf.Btf:
    return btf.from_file(image("6.12"))


def test_file_f_op_moved_between_61_and_612(k61, k612):
    assert k61.offset_of("file", "f_op") == 40
    assert k612.offset_of("file", "f_op") == 16
    assert (k61.offset_of("file", "f_inode"), k612.offset_of("file", "f_inode")) == (32, 40)


def test_nested_paths_through_embedded_structs(k61, k612):
    # struct path { struct vfsmount *mnt; struct dentry *dentry; } embedded in file
    assert k61.offset_of("file", "f_path.dentry") == 16 + 8
    assert k612.offset_of("file", "f_path.dentry") == 64 + 8


@pytest.mark.parametrize("which", ["k61", "k612"])
def test_the_fd_table_and_scm_layouts_the_kernel_backend_reads(which, request):
    b = request.getfixturevalue(which)
    assert b.offset_of("task_struct", "files") == 3048
    assert b.offset_of("files_struct", "fdt") == 32
    assert (b.offset_of("fdtable", "max_fds"), b.offset_of("fdtable", "fd"),
            b.offset_of("fdtable", "close_on_exec")) == (0, 8, 16)
    assert b.offset_of("scm_cookie", "fp") == 8
    assert (b.offset_of("scm_fp_list", "count"), b.member_size("scm_fp_list", "count")) == (0, 2)
    assert (b.offset_of("scm_fp_list", "fp"), b.member_size("scm_fp_list", "fp")) == (40, 253 * 8)


def test_functions_present_and_renamed(k61, k612):
    for b in (k61, k612):
        assert b.has_func("fd_install") and b.has_func("do_dup2") and b.has_func("filp_close")
        assert b.has_func("__scm_send") and b.has_func("begin_new_exec")
    assert k61.has_func("pick_file") and not k61.has_func("file_close_fd_locked")
    assert k612.has_func("file_close_fd_locked") and not k612.has_func("pick_file")
    assert not k61.has_func("tun_set_iff")      # inlined (and in a module anyway)


def test_member_inside_an_anonymous_union(k612):
    # 6.12's struct file (pahole): union { f_pos_lock; f_pipe; } at 80, and
    # union { f_task_work; f_llist; f_ra; f_freeptr; } at 152
    assert k612.offset_of("file", "f_pos_lock") == k612.offset_of("file", "f_pipe") == 80
    assert {k612.offset_of("file", n) for n in ("f_task_work", "f_llist", "f_ra",
                                                 "f_freeptr")} == {152}
    assert k612.offset_of("file", "f_pos") == 112


def test_the_running_kernel_and_a_module_on_top_of_it():
    if not HOST.exists():
        pytest.skip("no /sys/kernel/btf/vmlinux")
    b = btf.vmlinux()
    assert b.size_of("file") > b.offset_of("file", "f_op") >= 0
    assert b.resolve(b.member("file", "f_op")[1].type_id) != 0
    if (btf.SYS_BTF / "tun").exists():
        tun = btf.module("tun")
        assert tun.has_func("tun_chr_open")
        assert tun.offset_of("tun_struct", "dev") >= 0
        assert not b.has_func("tun_chr_open")


def test_unknown_names_and_bad_input_are_one_line_errors(k61, tmp_path):
    with pytest.raises(btf.BtfError, match="no struct no_such_struct"):
        k61.offset_of("no_such_struct", "x")
    with pytest.raises(btf.BtfError, match="has no member f_nope"):
        k61.offset_of("file", "f_nope")
    with pytest.raises(btf.BtfError, match="is not inside a struct"):
        k61.offset_of("file", "f_op.x")
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack("<HBBI", 0x1234, 1, 0, 24) + bytes(16))
    with pytest.raises(btf.BtfError, match="not BTF"):
        btf.from_file(bad)
    with pytest.raises(btf.BtfError, match="cannot read"):
        btf.from_file(tmp_path / "missing")
