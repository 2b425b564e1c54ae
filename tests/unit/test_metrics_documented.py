"""Every exported metric is described in docs/operations.md, where operators look for it."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

import gateway.metrics  # noqa: F401  (registers the gateway's metrics)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_gateway_metric_has_a_row_in_the_operations_guide() -> None:
    documented = set(re.findall(r"`(gateway_[a-z_]+)`", DOCS.read_text("utf-8")))
    exported = {collector.name for collector in REGISTRY.collect() if collector.name.startswith("gateway_")}
    # prometheus_client reports counters without their _total suffix.
    missing = sorted(name for name in exported if name not in documented and f"{name}_total" not in documented)
    assert not missing, f"metrics not described in docs/operations.md: {missing}"
