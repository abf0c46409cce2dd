"""The agent's outputs besides its history: `--metrics ADDR:PORT` (tracer/metrics.py)
and `--log`/`--log-events` (tracer/logsink.py). `options` adds their flags to a click
command; each factory builds its sink from the agent's options (AgentOptions.extra,
filled from those flags) or returns None when it was not asked for."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from . import render

if TYPE_CHECKING:
    from .agent_sink import AgentSink

OPTION_NAMES = ("metrics", "log", "log_events", "log_socket")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9979


# ---- the address -----------------------------------------------------------

def parse_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[IPV6]:PORT` or a bare `PORT` (loopback) -> (host, port);
    ValueError with the reason otherwise. ADDR is an IP address, not a name: the
    agent must not depend on a resolver to start."""
    text = text.strip()
    if text.isdigit():
        host, port_s = DEFAULT_HOST, text
    elif text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address goes as [ADDR]:PORT")
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected ADDR:PORT, e.g. 127.0.0.1:9979")
        if ":" in host:
            raise ValueError("an IPv6 address goes as [ADDR]:PORT")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{render.safe(host)} is not an IP address") from None
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{render.safe(port_s)} is not a port (0-65535)")
    return host, int(port_s)


class AddressParam(click.ParamType):
    """The click type of `--metrics ADDR:PORT` (a bad one is a usage error, exit 2)."""
    name = "ADDR:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_address(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


METRICS_ADDRESS = AddressParam()


def options(f: Callable) -> Callable:
    """--metrics, --log, --log-events, --log-socket on a command (its callback gets
    them as keyword arguments of those names)."""
    for decorate in reversed((
        click.option("--metrics", type=METRICS_ADDRESS, default=None, metavar="ADDR:PORT",
                     help="Serve Prometheus metrics on ADDR:PORT (a bare PORT: "
                          f"{DEFAULT_HOST}; e.g. {DEFAULT_HOST}:{DEFAULT_PORT})."),
        click.option("--log", "log", is_flag=True,
                     help="Each finding as it appears and clears to the system log "
                          "(the journal where journald runs, else syslog)."),
        click.option("--log-events", is_flag=True,
                     help="With --log: each event too."),
        click.option("--log-socket", default=None, metavar="PATH",
                     help="With --log: syslog on this socket instead (default /dev/log, "
                          "or the journal where it runs)."),
    )):
        f = decorate(f)
    return f


def outputs(params: dict) -> dict:
    """The output options among a command's parameters (for AgentOptions.extra);
    a usage error (exit 2) for options that go together given apart."""
    out = {k: params[k] for k in OPTION_NAMES if k in params}
    if not out.get("log") and (out.get("log_events") or out.get("log_socket")):
        raise click.UsageError("--log-events and --log-socket go with --log")
    return out


def metrics_sink(opts) -> AgentSink | None:
    addr = opts.extra.get("metrics")
    if addr is None:
        return None
    try:
        from .metrics import MetricsSink
    except ImportError:
        raise click.ClickException("--metrics needs prometheus_client: apt-get install "
                                   "python3-prometheus-client (or pip install "
                                   "prometheus_client)") from None
    return MetricsSink(*addr)


def log_sink(opts) -> AgentSink | None:
    extra = opts.extra
    if not extra.get("log"):
        return None
    from .logsink import LogSink, default_target
    return LogSink(default_target(extra.get("log_socket")), events=bool(extra.get("log_events")))


FACTORIES = (metrics_sink, log_sink)
