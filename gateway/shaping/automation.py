"""Automation rules: a regex on the remote reply chooses an action (pure).

Rules are tried in the order the policy lists them; the first that matches wins. Actions:
``suspend`` (stop using this source IP for this provider for ``duration``), ``throttle``
(send at ``rate`` from this IP to this provider for ``duration``) and ``bounce`` (treat the
reply as permanent whatever its code says).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.shaping.rates import Rate

ActionKind = Literal["suspend", "throttle", "bounce"]


@dataclass(frozen=True)
class AutomationRule:
    pattern: re.Pattern[str]
    action: ActionKind
    duration: float = 0.0
    rate: Rate | None = None
    name: str = ""


def first_match(rules: Sequence[AutomationRule], reply: str) -> AutomationRule | None:
    """The first rule whose pattern is found in ``reply`` (multi-line replies joined by ' / ')."""
    for rule in rules:
        if rule.pattern.search(reply):
            return rule
    return None
