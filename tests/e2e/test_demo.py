"""`gateway demo` end to end: its run feeds every panel of the shipped Grafana dashboard.

The demo runs as a subprocess, as a newcomer starts it; /metrics is scraped every half
second while it runs, and each series keeps the largest value it showed (gauges such as
open connections are only non-zero for a moment). Then every dashboard query must have
data, `gateway trace` of the printed suppressed address must show the suppression, and
the run must have printed its where-to-look block.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.sandbox.demo import speed_up_rates

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "gateway.json"
RUN_SECONDS = 120

# Panels a demo run legitimately leaves empty; keep this short and say why.
EMPTY_IN_A_DEMO = {
    # Pauses and step-backs are decided from a whole day's deferral share of a warming IP.
    "Warm-up pauses and step-backs (per hour)",
    # Nobody edits a policy during the run (try `gateway reload -c var/demo/gateway.toml`).
    "Policy reloads (per hour)",
}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

_SELECTOR = re.compile(r"\b(gateway_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def scrape(url: str, into: Series) -> None:
    text = httpx.get(url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            into[key] = max(into.get(key, 0.0), sample.value)


def _matches(labels: frozenset[tuple[str, str]], matchers: str) -> bool:
    values = dict(labels)
    for name, op, wanted in _MATCHER.findall(matchers or ""):
        have = values.get(name, "")
        ok = {"=": have == wanted, "!=": have != wanted, "=~": re.fullmatch(wanted, have) is not None,
              "!~": re.fullmatch(wanted, have) is None}[op]
        if not ok:
            return False
    return True


def has_data(expr: str, seen: Series) -> bool:
    """Every metric the expression selects had a series during the run (a ratio of sums has
    no data when either side is empty), and one of them a non-zero sample."""
    selected = [[value for (name, labels), value in seen.items() if name == metric and _matches(labels, matchers)]
                for metric, matchers in _SELECTOR.findall(expr)]
    return all(selected) and any(value != 0 for values in selected for value in values)


def test_has_data_honours_label_matchers() -> None:
    seen: Series = {("gateway_bounces_total", frozenset({("severity", "soft")})): 2.0,
                    ("gateway_deliveries_total", frozenset({("result", "delivered")})): 0.0}
    assert has_data('sum(rate(gateway_bounces_total{severity=~"so.*"}[5m]))', seen)
    assert not has_data('sum(rate(gateway_bounces_total{severity="hard"}[5m]))', seen)
    assert not has_data("sum(rate(gateway_deliveries_total[5m]))", seen)
    # A ratio needs both sides: an empty denominator leaves the panel without data.
    assert not has_data('sum(gateway_bounces_total{severity="soft"}) / sum(gateway_complaints_total)', seen)
    assert has_data('sum(gateway_bounces_total{severity="soft"}) / sum(gateway_deliveries_total)', seen)


def test_the_demo_policy_only_speeds_up_rates() -> None:
    text = ('max_message_rate = "3000/h"\nprovider_max_message_rate = "unlimited"\n'
            'rate = "1.5/min"\nretry_first = "5m"\n')
    assert speed_up_rates(text, 6) == ('max_message_rate = "18000/h"\nprovider_max_message_rate = "unlimited"\n'
                                       'rate = "9/min"\nretry_first = "5m"\n')


class Demo:
    """The demo subprocess, its output collected line by line as it comes."""

    def __init__(self, directory: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--dir", str(directory), "--exit-after", "3"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.process.stdout, self.lines), (self.process.stderr, self.errors))]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for thread in self._threads:
            thread.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    @property
    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + "\n".join(self.errors)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path / "demo")
    yield running
    running.stop()


def test_the_demo_feeds_every_dashboard_panel_and_names_a_traceable_suppression(
        demo: Demo, tmp_path: Path) -> None:
    seen: Series = {}
    deadline = time.monotonic() + RUN_SECONDS
    metrics_url = None
    while demo.process.poll() is None and time.monotonic() < deadline:
        if metrics_url is None and (found := demo.find(r"admin and /metrics (http://[0-9.]+:\d+)")):
            metrics_url = found.group(1) + "/metrics"
        if metrics_url is not None:
            with contextlib.suppress(httpx.HTTPError):  # not listening yet, or already stopped
                scrape(metrics_url, seen)
        time.sleep(0.5)
    demo.stop()
    assert demo.process.returncode == 0, demo.output
    assert "Traceback" not in demo.output, demo.output
    assert metrics_url is not None and seen, demo.output

    block = demo.find(r"Where to look")
    assert block is not None, demo.output
    for wanted in (r"/metrics", r"docs/grafana/gateway\.json", r"gateway queue list -c ",
                   r"/preferences/[a-z2-7]+", r"inbox/"):
        assert demo.find(wanted), (wanted, demo.output)

    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    empty = [(panel["title"], target["expr"]) for panel in panels if panel["title"] not in EMPTY_IN_A_DEMO
             for target in panel.get("targets", []) if not has_data(target["expr"], seen)]
    assert empty == [], demo.output
    titles = {panel["title"] for panel in panels}
    assert titles >= EMPTY_IN_A_DEMO  # the allow-list names real panels

    trace = demo.find(r"gateway trace (\S+@\S+) -c (\S+)")
    assert trace is not None, demo.output
    config = trace.group(2) if Path(trace.group(2)).is_absolute() else str(ROOT / trace.group(2))
    shown = subprocess.run([sys.executable, "-m", "gateway", "trace", trace.group(1), "-c", config],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "suppressed globally (hard-bounce)" in shown.stdout, shown.stdout
