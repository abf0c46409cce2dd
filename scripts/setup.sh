#!/usr/bin/env bash
# Make this machine ready for taptrace (Debian/Ubuntu): distro packages, kernel
# headers for bcc, tracefs, and .venv. Idempotent; a rerun on a ready machine
# takes about a second. Root is needed only for the steps that are still to do.
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

SYSPY=/usr/bin/python3          # bcc (python3-bpfcc) is built for the system Python
VENV=$PWD/.venv
LOG=$(mktemp /tmp/taptrace-setup.XXXXXX)
trap 'rm -f "$LOG"' EXIT

say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root: sudo scripts/setup.sh"; }
# Run quietly; on failure show the tail of what it printed, then one line.
quiet() {
    local what=$1; shift
    if ! "$@" >"$LOG" 2>&1; then
        tail -n 25 "$LOG" | sed 's/^/    /' >&2
        die "$what failed: $*"
    fi
}
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

release=$(uname -r)
PACKAGES=(python3-bpfcc python3-venv bpftrace gcc libc6-dev make iproute2 kmod qemu-system-x86 libvirt-daemon-system libvirt-clients uml-utilities openvpn slirp4netns passt
          python3-prometheus-client python3-systemd prometheus python3-seccomp)   # the agent: metrics, journal; tests: a real Prometheus, the unit's syscall filter

# 1. Distro packages.
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
    || die "needs a Debian-like system with apt-get (install bcc, python3-venv and kernel headers by hand)"
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
arch=$(dpkg --print-architecture)
want_headers=
if [ ! -d "/lib/modules/$release/build" ] && ! installed "linux-headers-$release" \
        && ! installed "linux-headers-$arch"; then
    want_headers=1
fi
if [ ${#missing[@]} -gt 0 ] || [ -n "$want_headers" ]; then
    need_root "installing packages"
    say "apt-get update"
    quiet "apt-get update" apt-get -q -o DPkg::Lock::Timeout=300 update
    if [ -n "$want_headers" ]; then
        if apt-cache show --no-all-versions "linux-headers-$release" >/dev/null 2>&1; then
            missing+=("linux-headers-$release")
        else
            # No headers for this kernel (built elsewhere): the distro's serve, see tracer/kheaders.py.
            missing+=("linux-headers-$arch")
        fi
    fi
    say "apt-get install ${missing[*]}"
    quiet "apt-get install" apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}"
else
    say "packages: all present"
fi
[ -x "$SYSPY" ] || die "$SYSPY missing after install"

# 2. tracefs, and a kernel headers tree for bcc when /lib/modules has none.
#    Both done by tracer/kheaders.py (one implementation, also used at run time).
if ! out=$("$SYSPY" -m tracer.kheaders 2>&1); then
    echo "$out" | sed 's/^/    /' >&2
    [ "$(id -u)" = 0 ] || die "tracefs or kernel headers need root: sudo scripts/setup.sh"
    die "no tracefs or no kernel headers for bcc (see above)"
fi
echo "$out" | sed 's/^/setup: /'

# 3. The venv: system Python, with system site-packages so that bcc is visible.
#    Reinstalled only when pyproject.toml changed or the venv is not what we want.
stamp="$VENV/.taptrace-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$SYSPY" -c 'import sys; print(sys.version.split()[0])')"
cfg="$VENV/pyvenv.cfg"
if [ -f "$cfg" ] && { ! grep -q '^include-system-site-packages = true' "$cfg" \
                      || ! grep -q '^home = /usr/bin$' "$cfg"; }; then
    say "recreating .venv (it was not made from $SYSPY with --system-site-packages)"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating .venv"
    quiet "python venv" "$SYSPY" -m venv --system-site-packages "$VENV"
fi
# Imports are checked from / so that the checkout itself does not stand in for the install.
imports_ok() { (cd / && "$VENV/bin/python" -c 'import bcc, click, tabulate, tracer; bcc.BPF'); }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/taptrace" ] \
        || ! imports_ok >/dev/null 2>&1; then
    say "pip install -e '.[test]' into .venv"
    quiet "pip install" "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e '.[test]'
    echo "$want" >"$stamp"
fi
imports_ok >"$LOG" 2>&1 \
    || { sed 's/^/    /' "$LOG" >&2; die "$VENV cannot import bcc, click, tabulate and tracer"; }
say "ready: .venv/bin/taptrace"
