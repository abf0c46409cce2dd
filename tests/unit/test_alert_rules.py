"""The example alerting rules (contrib/prometheus/taptrace-alerts.yml) are valid
Prometheus rules and fire as their promtool unit tests say: a finding that lasts
2 minutes alerts per host and kind, a shorter one does not; lost records; a silent
agent. The metric names they use are the ones the agent serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tracer.metrics import MetricsSink
from tracer.replay import recorded_model

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None,
                                    reason="promtool is missing (apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True,
                          timeout=60, check=False)


@needs_promtool
def test_the_rules_are_valid():
    out = promtool("check", "rules", "taptrace-alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 4 rules found" in out.stdout


@needs_promtool
def test_the_rules_fire_as_specified():
    out = promtool("test", "rules", "taptrace-alerts.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rules_name_metrics_the_agent_serves():
    sink = MetricsSink("127.0.0.1", 0)
    try:
        sink.refresh(recorded_model({}, {}))
        names = {m.name for m in sink.registry.collect()}
    finally:
        sink.close()
    used = set(re.findall(r"\btaptrace_\w+", (RULES / "taptrace-alerts.yml").read_text()))
    # a counter family is named without _total; its sample has it
    served = names | {n + "_total" for n in names}
    assert used and used <= served, used - served
