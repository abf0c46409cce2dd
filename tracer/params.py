"""The click parameter types of taptrace's options: every value a user types is
checked here, so a bad one is a usage error (exit 2) in one line, never a traceback
or a trace of nothing."""

from __future__ import annotations

import math
import os
import re
from typing import ClassVar

import click

from . import render


class Seconds(click.ParamType):
    """A finite duration in (0, SECONDS_MAX]: nan, inf and 1e309 (inf) are usage errors."""

    name = "seconds"
    SECONDS_MAX = 1e9            # 31 years; more is a typo, and overflows a poll timeout
    NUMBER = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")

    def convert(self, value, param, ctx):
        text = value if isinstance(value, str) else repr(value)
        # plain decimals only: float() would also take "1_0", " 5", "infinity", "٣"
        if not self.NUMBER.fullmatch(text):
            self.fail(f"'{render.safe(value)}' is not a number of seconds", param, ctx)
        s = float(text)
        if not math.isfinite(s) or not 0 < s <= self.SECONDS_MAX:
            self.fail(f"'{render.safe(value)}': give a finite number of seconds, more than "
                      f"0 and at most {self.SECONDS_MAX:g}", param, ctx)
        return s


def pid_max() -> int:
    """/proc/sys/kernel/pid_max: every pid is below it (else the kernel's limit, 2**22)."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22


class Pid(click.ParamType):
    """A pid that exists now: one that cannot exist (above pid_max) or is not running
    would trace nothing, silently."""

    name = "pid"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            pid = value
        else:
            text = str(value).strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 10):
                self.fail(f"'{render.safe(value)}' is not a process id", param, ctx)
            pid = int(text)
        limit = pid_max()
        if not 1 <= pid < limit:
            self.fail(f"{pid} cannot be a process id here (1 to {limit - 1}, "
                      "/proc/sys/kernel/pid_max)", param, ctx)
        if not os.path.exists(f"/proc/{pid}"):
            self.fail(f"no process {pid}", param, ctx)
        return pid


class Glob(click.ParamType):
    """A name glob: an empty one matches nothing (a typo such as -i "$UNSET")."""

    name = "glob"
    MAX = 256

    def convert(self, value, param, ctx):
        if value == "":
            self.fail("an empty GLOB matches nothing (quote '*' for everything)", param, ctx)
        if len(value) > self.MAX:
            self.fail(f"a GLOB of {len(value)} characters (at most {self.MAX})", param, ctx)
        return value


class IfName(click.ParamType):
    """An interface name the kernel could have made (net/core/dev.c dev_valid_name):
    1 to 15 bytes, not . or .., no '/', ':' or white space."""

    name = "ifname"

    def convert(self, value, param, ctx):
        raw = os.fsencode(value)
        if not raw:
            self.fail("an empty interface name", param, ctx)
        if len(raw) > 15:
            self.fail(f"'{render.safe(value)}' is {len(raw)} bytes; an interface name "
                      "is at most 15", param, ctx)
        if raw in (b".", b"..") or any(c in b"/: \t\n\v\f\r" for c in raw):
            self.fail(f"'{render.safe(value)}' cannot be an interface name", param, ctx)
        return value


class BufferPages(click.ParamType):
    """Ring buffer pages: a power of two, at most 65536 (256 MiB)."""

    name = "pages"
    MAX = 1 << 16

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 10):
            self.fail(f"'{render.safe(value)}' is not a number of pages", param, ctx)
        n = int(text)
        if not 1 <= n <= self.MAX or n & (n - 1):
            self.fail(f"{n}: give a power of two from 1 to {self.MAX}", param, ctx)
        return n


class User(click.ParamType):
    """-u USER: a user name (or uid) that /etc/passwd knows."""

    name = "user"

    def convert(self, value, param, ctx):
        from .command import RunAs, lookup_user
        if isinstance(value, RunAs):
            return value
        try:
            return lookup_user(value)
        except (KeyError, OverflowError):
            self.fail(f"no user '{render.safe(value)}'", param, ctx)


class Duration(click.ParamType):
    """A retention age: a number with s, m, h, d or w (`30d`); plain: seconds."""

    name = "age"
    UNITS: ClassVar[dict[str, int]] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    PATTERN = re.compile(r"([0-9]{1,9}(?:\.[0-9]+)?)([smhdw]?)")

    def convert(self, value, param, ctx):
        m = self.PATTERN.fullmatch(str(value).strip())
        if not m or float(m.group(1)) <= 0:
            self.fail(f"'{render.safe(value)}' is not an age (e.g. 30d, 12h, 90m)",
                      param, ctx)
        return float(m.group(1)) * self.UNITS[m.group(2)]


class Size(click.ParamType):
    """A size: bytes, or a number with K, M, G or T (powers of 1024): `1G`."""

    name = "size"
    UNITS: ClassVar[dict[str, int]] = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    PATTERN = re.compile(r"([0-9]{1,12}(?:\.[0-9]+)?)([kmgt]?)(?:i?b)?", re.IGNORECASE)

    def convert(self, value, param, ctx):
        m = self.PATTERN.fullmatch(str(value).strip())
        n = int(float(m.group(1)) * self.UNITS[m.group(2).lower()]) if m else 0
        if n < 1 << 20:
            self.fail(f"'{render.safe(value)}' is not a size of at least 1M "
                      "(e.g. 1G, 500M)", param, ctx)
        return n


class When(click.ParamType):
    """A moment: ISO 8601 (`2026-11-30T02:10:00`, local time without a zone) or
    epoch seconds."""

    name = "time"

    def convert(self, value, param, ctx):
        from .history import parse_time
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except (ValueError, OverflowError, OSError):
            self.fail(f"'{render.safe(value)}' is not a time (ISO 8601, e.g. "
                      "2026-11-30T02:10:00 or 2026-11-30 02:10+01:00, or epoch seconds)",
                      param, ctx)
