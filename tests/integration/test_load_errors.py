"""How a failure to load the BPF backend is reported, on the real kernel and compiler.

A verifier rejection is a taptrace bug on that kernel (whatever the headers), and must
say so with the program's name and the verifier's last words; a compile error is a
headers problem. Both used to read "could not compile ... against the headers".
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT, need_root

from tracer import doctor, kheaders, probes

REJECTED = r"""
TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	u64 v;
	/* above the top of the BPF stack: the verifier must refuse this */
	asm volatile("%0 = *(u64 *)(r10 + 8)" : "=r"(v));
	return v;
}
"""

BROKEN = "TRACEPOINT_PROBE(syscalls, sys_exit_ioctl) { return nosuchname; }\n"


def refusal(text: str) -> probes.ProbeError:
    """What loading TEXT the way the backend loads its program raises."""
    need_root()
    kheaders.prepare_bcc_env()
    bcc = probes._import_bcc()
    with pytest.raises(probes.ProbeError) as err:
        probes.load_bpf(bcc, text, [], None)
    return err.value


def test_a_verifier_rejection_names_the_program_and_the_verifiers_reason():
    err = refusal(REJECTED)

    msg = str(err)
    assert msg.startswith("the kernel's verifier rejected BPF program "
                          "tracepoint__syscalls__sys_exit_ioctl on Linux "
                          f"{platform.release()}: ")
    assert "invalid read from stack" in msg and "headers" not in msg
    assert "\n" not in msg
    assert err.details and any("invalid read from stack" in d for d in err.details)


def test_a_compile_error_is_reported_as_one_and_names_clangs_error():
    msg = str(refusal(BROKEN))
    assert msg.startswith("could not compile the BPF program against ")
    assert "nosuchname" in msg and "verifier" not in msg


@pytest.mark.smoke
def test_doctor_loads_the_backend_for_real():
    need_root()

    checks = {c.name: c for c in doctor.run_checks()}

    assert checks["bpf load"].ok, checks["bpf load"].detail
    assert "tracepoint backend compiled and loaded" in checks["bpf load"].detail
    assert checks["backend"].ok


PAST_CONTEXT = r"""
TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	u64 v;
	/* past the end of the tracepoint's record: refused at load or at attach */
	asm volatile("%0 = *(u64 *)(%1 + 4096)" : "=r"(v) : "r"(args));
	return v;
}
"""


def test_a_refused_attach_is_the_kernels_word_not_a_headers_problem():
    msg = str(refusal(PAST_CONTEXT))
    refused = ("the kernel refused to attach BPF program "
               "tracepoint__syscalls__sys_exit_ioctl to syscalls:sys_exit_ioctl")
    assert msg.startswith((refused, "the kernel's verifier rejected BPF program")), msg
    assert "headers" not in msg


def _kernel_backend_loads() -> bool:
    from tracer.backends.kernel import KernelBackend
    try:
        KernelBackend(lambda _e: None).close()
    except probes.ProbeError:
        return False
    return True


def test_the_kernel_backend_where_it_cannot_load_is_one_line_and_auto_falls_back():
    """On a kernel that refuses it (this project's 6.18: no fentry, no tun_fops in
    kallsyms), --backend kernel is one clear line; auto and tracepoint still trace."""
    need_root()
    if _kernel_backend_loads():
        pytest.skip("the kernel backend loads here (the guest): nothing to report")
    out = subprocess.run([sys.executable, "-m", "tracer", "watch", "--backend", "kernel",
                          "--duration", "1"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "kernel backend" in out.stderr
    assert "Traceback" not in out.stderr
    auto = subprocess.run([sys.executable, "-m", "tracer", "watch", "--json", "--duration",
                           "0.5"], cwd=ROOT, capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items()
                               if k != "TAPTRACE_BACKEND"})
    assert auto.returncode == 0 and '"backend": "tracepoint"' in auto.stdout.splitlines()[0]
