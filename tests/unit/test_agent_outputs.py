"""The agent's output options (tracer/agent_outputs.py) on a real click command: a bad
--metrics address is a one-line usage error, --log-events without --log is refused,
and each factory builds its sink only when asked for."""

from __future__ import annotations

from dataclasses import dataclass, field

import click
import pytest
from click.testing import CliRunner

from tracer import agent_outputs
from tracer.logsink import LogSink, SyslogTarget
from tracer.metrics import MetricsSink


@dataclass
class Opts:
    extra: dict = field(default_factory=dict)


@click.command()
@agent_outputs.options
def agentlike(**outputs) -> None:
    click.echo(repr(agent_outputs.outputs(outputs)))


def run(*args: str):
    return CliRunner().invoke(agentlike, list(args))


def test_the_options_reach_the_command():
    out = run("--metrics", "9100", "--log", "--log-events", "--log-socket", "/x/log")
    assert out.exit_code == 0, out.output
    assert out.output.strip() == repr({"metrics": ("127.0.0.1", 9100), "log": True,
                                       "log_events": True, "log_socket": "/x/log"})


def test_a_bad_address_is_a_usage_error():
    out = run("--metrics", "localhost:9979")
    assert out.exit_code == 2
    assert out.output.splitlines()[-1] == ("Error: Invalid value for '--metrics': localhost "
                                           "is not an IP address")


def test_nothing_asked_nothing_built():
    opts = Opts({"metrics": None, "log": False, "log_events": False, "log_socket": None})
    assert [make(opts) for make in agent_outputs.FACTORIES] == [None, None]


@pytest.mark.parametrize("args", [["--log-events"], ["--log-socket", "/x/log"]])
def test_log_options_need_log(args):
    out = run(*args)
    assert out.exit_code == 2
    assert out.output.splitlines()[-1] == "Error: --log-events and --log-socket go with --log"


@pytest.mark.parametrize("args, error", [
    (["--metrics", "localhost:9979"], ("Error: Invalid value for '--metrics': localhost is "
                                      "not an IP address")),
    (["--log-events"], "Error: --log-events and --log-socket go with --log"),
])
def test_the_agent_refuses_them_before_tracing(args, error):
    """On the real `taptrace agent`: a usage error, before any BPF is loaded."""
    from tracer.cli import cli
    out = CliRunner().invoke(cli, ["agent", "--db", "/nonexistent/x.db", *args])
    assert out.exit_code == 2, out.output
    assert out.output.splitlines()[-1] == error


def test_each_factory_builds_its_sink(tmp_path):
    opts = Opts({"metrics": ("127.0.0.1", 0), "log": True, "log_events": True,
                 "log_socket": str(tmp_path / "log")})
    metrics, log = (make(opts) for make in agent_outputs.FACTORIES)
    try:
        assert isinstance(metrics, MetricsSink) and metrics.address[0] == "127.0.0.1"
        assert isinstance(log, LogSink) and log.events
        assert isinstance(log.target, SyslogTarget) and log.target.path == str(tmp_path / "log")
    finally:
        metrics.close()
        log.close()
