"""The kernel backend's hook mode (tracer/backends/kernel.py, no bcc): which mode is
asked for and tried, the line that says which one loaded, and the plan of vmlinux
hooks in each mode - the same functions, fentry/fexit or kprobes/kretprobes."""

from __future__ import annotations

import pytest

from tracer.backends import kernel
from tracer.backends.kernel import Plan, mode_note, modes_to_try, vmlinux_hooks, wanted_hooks
from tracer.probes import ProbeError

# a 6.12-like kernel: the close path is file_close_fd_locked
ALL = {*kernel.REQUIRED_FUNCS, "file_close_fd_locked", *kernel.OPTIONAL_FUNCS,
       kernel.IOCTL_CHECK_FUNC}


def test_the_mode_comes_from_the_environment_auto_by_default():
    assert wanted_hooks({}) == "auto"
    assert wanted_hooks({"TAPTRACE_KERNEL_HOOKS": ""}) == "auto"
    assert wanted_hooks({"TAPTRACE_KERNEL_HOOKS": "kprobe"}) == "kprobe"
    assert wanted_hooks({"TAPTRACE_KERNEL_HOOKS": "fentry"}) == "fentry"
    with pytest.raises(ProbeError, match="TAPTRACE_KERNEL_HOOKS='kfunc': one of auto"):
        wanted_hooks({"TAPTRACE_KERNEL_HOOKS": "kfunc"})


def test_auto_tries_fentry_then_kprobes_a_forced_mode_only_itself():
    assert modes_to_try("auto") == ("fentry", "kprobe")
    assert modes_to_try("kprobe") == ("kprobe",)
    assert modes_to_try("fentry") == ("fentry",)


def test_the_note_says_the_mode_and_why():
    assert mode_note("fentry", "auto", None) == "kernel backend hooks: fentry (auto)"
    assert mode_note("kprobe", "auto", "refused: lockdown") == \
        "kernel backend hooks: kprobe (fentry refused: lockdown)"
    assert mode_note("kprobe", "kprobe", None) == \
        "kernel backend hooks: kprobe (TAPTRACE_KERNEL_HOOKS=kprobe)"


def plan_of(mode: str, funcs: set[str], ioctl_check: bool = True) -> tuple[Plan, list[str]]:
    p = Plan(mode=mode)
    return p, vmlinux_hooks(p, funcs.__contains__, "here", ioctl_check)


def test_fentry_mode_attaches_no_kprobe_of_its_own():
    p, cflags = plan_of("fentry", ALL)
    assert p.kprobes == [] and "-DTT_KPROBES" not in cflags
    assert "-DTT_CLOSE_FN=file_close_fd_locked" in cflags
    how = {h["hook"]: h["how"] for h in p.hooks}
    assert (how["fd_install"], how["do_dup2"], how["scm_detach_fds"]) == \
        ("fentry", "fexit", "fentry+fexit")


def test_kprobe_mode_hooks_the_same_functions_fexit_as_kretprobe():
    fp, fentry_flags = plan_of("fentry", ALL)
    kp, kprobe_flags = plan_of("kprobe", ALL)
    assert kprobe_flags == [*fentry_flags, "-DTT_KPROBES"]
    assert [h["hook"] for h in kp.hooks] == [h["hook"] for h in fp.hooks]
    assert [f for f, _e, _r in kp.kprobes] == [h["hook"] for h in kp.hooks]
    progs = {f: (e, r) for f, e, r in kp.kprobes}
    # every fexit becomes a kretprobe with a kprobe at the entry keeping its arguments
    assert progs["do_dup2"] == ("do_dup2_entry", "do_dup2_return")
    assert progs["__scm_send"] == ("scm_send_entry", "scm_send_return")
    assert progs["ksys_unshare"] == ("unshare_entry", "unshare_return")
    assert progs["scm_detach_fds"] == ("scm_detach_entry", "scm_detach_return")
    assert progs["file_close_fd_locked"] == ("close_entry", None)
    assert progs["fd_install"] == ("fd_install_entry", None)
    how = {h["hook"]: h["how"] for h in kp.hooks}
    assert (how["fd_install"], how["do_dup2"]) == ("kprobe", "kprobe+kretprobe")


def test_kprobe_programs_are_in_the_bpf_source():
    from tracer.probes import bpf_source

    src = bpf_source(kernel.SOURCE)
    for entry, ret in kernel.KPROBE_PROGRAMS.values():
        for prog in filter(None, (entry, ret)):
            assert f"int {prog}(void *ctx)" in src, prog


def test_what_is_absent_is_left_out_or_refused():
    # 6.1: pick_file; no security_file_ioctl asked for
    p, cflags = plan_of("kprobe", (ALL - {"file_close_fd_locked", "ksys_unshare"}) |
                        {"pick_file"}, ioctl_check=False)
    assert "-DTT_CLOSE_FN=pick_file" in cflags and "-DTT_HAVE_KSYS_UNSHARE" not in cflags
    assert "-DTT_HAVE_IOCTL_CHECK" not in cflags
    hooked = {f for f, _e, _r in p.kprobes}
    assert "pick_file" in hooked and not hooked & {"ksys_unshare", "security_file_ioctl"}
    with pytest.raises(ProbeError, match=r"cannot hook do_dup2 .*not here: inlined"):
        plan_of("kprobe", ALL - {"do_dup2"})
    with pytest.raises(ProbeError, match="no close path"):
        plan_of("kprobe", ALL - {"file_close_fd_locked"})


@pytest.fixture
def loads(monkeypatch):
    """BccBackend's loading, stood in for: refuses the modes in `refuse`."""
    from tracer import probes

    refuse: dict[str, str] = {}
    tried: list[str] = []

    def fake_init(self, *_a, **_k) -> None:
        tried.append(self.mode)
        if self.mode in refuse:
            raise ProbeError(refuse[self.mode])
        self.info = probes.BackendInfo("kernel", "ringbuf", 8, None)

    monkeypatch.setattr(probes.BccBackend, "__init__", fake_init)
    monkeypatch.delenv("TAPTRACE_KERNEL_HOOKS", raising=False)
    return refuse, tried


def test_auto_falls_back_to_kprobes_where_fentry_does_not_load(loads):
    refuse, tried = loads
    k = kernel.KernelBackend(print)
    assert (tried, k.mode, k.info.hooks, k.note) == (
        ["fentry"], "fentry", "fentry", "kernel backend hooks: fentry (auto)")
    refuse["fentry"] = "the kernel backend needs fentry/fexit (BPF trampolines)"
    tried.clear()
    k = kernel.KernelBackend(print)
    assert (tried, k.mode, k.info.hooks) == (["fentry", "kprobe"], "kprobe", "kprobe")
    assert k.note == "kernel backend hooks: kprobe (fentry needs fentry/fexit (BPF trampolines))"


def test_a_forced_mode_is_that_mode_or_its_error(loads, monkeypatch):
    refuse, tried = loads
    monkeypatch.setenv("TAPTRACE_KERNEL_HOOKS", "kprobe")
    assert kernel.KernelBackend(print).note == \
        "kernel backend hooks: kprobe (TAPTRACE_KERNEL_HOOKS=kprobe)"
    refuse["fentry"] = "the kernel refused to load the BPF programs"
    with pytest.raises(ProbeError, match="refused"):
        kernel.KernelBackend(print, hooks="fentry")
    refuse["kprobe"] = "the kernel backend needs kprobes"
    with pytest.raises(ProbeError, match="needs kprobes"):   # auto: the last mode's error
        kernel.KernelBackend(print, hooks="auto")
    assert tried == ["kprobe", "fentry", "fentry", "kprobe"]
