"""`pip install .` gives a `taptrace` command that works outside the checkout: a
fresh venv (system site packages, for Debian's bcc), the package installed from this
tree (not editable), then run from another directory: --version, and `doctor`, which
compiles and loads the BPF program from the installed copy of bpf/."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, need_root

SYSPY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if not os.path.exists(SYSPY):
        pytest.skip(f"{SYSPY} is missing")
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([SYSPY, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # no build isolation: setuptools from the system, so no index is needed
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "--no-build-isolation",
                    str(ROOT)], check=True, cwd=venv)
    return venv


def site_tracer(venv: Path) -> Path:
    out = subprocess.run([str(venv / "bin/python"), "-c",
                          "import tracer, os; print(os.path.dirname(tracer.__file__))"],
                         capture_output=True, text=True, check=True, cwd="/")
    return Path(out.stdout.strip())


def test_the_bpf_sources_are_installed_with_the_package(installed):
    pkg = site_tracer(installed)
    assert pkg.is_relative_to(installed), pkg        # the copy, not this checkout
    assert {p.name for p in (pkg / "bpf").iterdir()} >= {
        "events.h", "common.h", "sched.h", "tracepoint.bpf.c", "kernel.bpf.c"}
    assert (pkg / "backends" / "tracepoint.py").is_file()
    assert (pkg / "metrics.py").is_file() and (pkg / "logsink.py").is_file()


def test_version_outside_the_checkout(installed, tmp_path):
    out = subprocess.run([str(installed / "bin/taptrace"), "--version"], check=False,
                         cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "taptrace, version 0.1.0"


def test_doctor_loads_the_installed_bpf(installed, tmp_path):
    need_root()
    out = subprocess.run([str(installed / "bin/taptrace"), "doctor"], check=False, cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "compiled and loaded" in out.stdout, out.stdout
