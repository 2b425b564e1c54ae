"""Smooth weighted round robin (the nginx variant) over the IPs currently eligible.

Each pick adds every eligible member's weight to its running score, takes the highest and
subtracts the eligible total from it. Weights 5:1:1 give a, a, b, a, c, a, a ... spread out,
not in bursts, and a member skipped for a while (suspended, over its warm-up cap) rejoins
without a catch-up burst because scores only move while it is eligible.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


class SmoothWrr:
    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = {name: weight for name, weight in weights.items() if weight > 0}
        self._scores = dict.fromkeys(self.weights, 0)

    def pick(self, eligible: Collection[str]) -> str | None:
        members = [name for name in self.weights if name in eligible]
        if not members:
            return None
        total = 0
        for name in members:
            self._scores[name] += self.weights[name]
            total += self.weights[name]
        best = max(members, key=lambda name: self._scores[name])
        self._scores[best] -= total
        return best
