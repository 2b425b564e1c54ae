"""The shipped Grafana dashboard and Prometheus alert rules use only metrics that exist.

A renamed metric or label silently empties a panel and disarms an alert; this catches it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "gateway.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"

_SELECTOR = re.compile(r"\b(gateway_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
             "summary": ("_count", "_sum", "")}


def exported() -> dict[str, set[str]]:
    """Every series name gateway/metrics.py exports, with the label names it carries."""
    series: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels = set(value._labelnames)
            for suffix in _SUFFIXES[value._type]:
                series[value._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in data["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def problems_in(expr: str, series: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    used: set[str] = set()
    for name, selector in _SELECTOR.findall(expr):
        if name not in series:
            problems.append(f"{name} is not exported by gateway/metrics.py")
            continue
        used |= series[name]
        for label in _MATCHER.findall(selector):
            if label not in series[name]:
                problems.append(f"{name} has no label {label!r}")
    for grouping in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in used:
                problems.append(f"no metric in the expression has label {label!r}")
    return problems


def test_the_checker_notices_unknown_metrics_and_labels() -> None:
    series = exported()
    assert "gateway_deliveries_total" in series and "gateway_delivery_attempt_seconds_bucket" in series
    assert problems_in('sum by (shard) (rate(gateway_deliveries_total{result="x", pool="p"}[5m]))', series) == [
        "gateway_deliveries_total has no label 'pool'", "no metric in the expression has label 'shard'"]
    assert problems_in("gateway_deliveries", series) == ["gateway_deliveries is not exported by gateway/metrics.py"]


def test_dashboard_queries_use_existing_metrics_and_labels() -> None:
    series = exported()
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    assert [p for expr in exprs for p in problems_in(expr, series)] == []


def test_dashboard_layout() -> None:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_alert_rules_use_existing_metrics_and_are_complete() -> None:
    series = exported()
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert problems_in(rule["expr"], series) == [], rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    assert {"GatewayQueueGrowing", "GatewayComplaintRateHigh", "GatewayHardBounceRateHigh",
            "GatewayProviderSuspended", "GatewayWebhookBacklog"} <= set(names)
