"""Delivery policy files (policies/*.toml): behaviour operators tune without a restart.

This release reads the ``default`` provider profile: connection limits, retry
schedule, queue lifetime, TLS and timeouts for every destination. Per-provider
profiles with MX matching, rates and automation rules build on this schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.loader import ConfigError, read_toml, validate_layers
from gateway.config.schema import Duration, Strict
from gateway.queue.retry import RetrySchedule

POLICY_FILES = ("providers.toml",)


class ProviderProfile(Strict):
    connection_limit: int = Field(default=10, ge=1, le=1000)
    max_deliveries_per_connection: int = Field(default=100, ge=1)
    retry_first: Duration = Field(default=300.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    retry_max: Duration = Field(default=4 * 3600.0, gt=0)
    max_queue_age: Duration = Field(default=5 * 86400.0, gt=0)
    tls: Literal["opportunistic", "required", "disabled"] = "opportunistic"
    connect_timeout: Duration = Field(default=30.0, gt=0)
    command_timeout: Duration = Field(default=300.0, gt=0)
    idle_close: Duration = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _retry_order(self) -> ProviderProfile:
        if self.retry_max < self.retry_first:
            raise ValueError("retry_max must not be shorter than retry_first")
        return self

    @property
    def retry(self) -> RetrySchedule:
        return RetrySchedule(first=self.retry_first, factor=self.retry_factor,
                             maximum=self.retry_max, max_age=self.max_queue_age)


class Policy(Strict):
    providers: dict[str, ProviderProfile] = Field(default_factory=lambda: {"default": ProviderProfile()})

    @model_validator(mode="after")
    def _default_only(self) -> Policy:
        if "default" not in self.providers:
            raise ValueError("a [providers.default] profile is required")
        others = sorted(set(self.providers) - {"default"})
        if others:
            raise ValueError(f"profile {others[0]!r}: only [providers.default] is supported by "
                             "this version (provider matching is not implemented yet)")
        return self

    @property
    def default(self) -> ProviderProfile:
        return self.providers["default"]


def load_policy(directory: Path) -> Policy:
    """Read the policy files that exist in ``directory`` (a missing dir is an error)."""
    if not directory.is_dir():
        raise ConfigError([f"{directory}: policy directory not found"])
    sources = [read_toml(directory / name) for name in POLICY_FILES if (directory / name).exists()]
    return validate_layers(Policy, sources)
