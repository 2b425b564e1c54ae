"""Delivery policy files (policies/*.toml): behaviour operators tune without a restart.

``providers.toml`` holds ``[providers.NAME]`` profiles: how a provider is recognised
(MX host suffixes, recipient domain suffixes), its limits, retry schedule, TLS and
ordered automation rules. Every profile inherits ``[providers.default]`` key by key
(except the match lists). Limits apply per source IP per provider; keys named
``provider_*`` cap the provider across the whole pool. ``warmup.toml`` holds the
warm-up schedules and the health rule that pauses or steps them back. ``reputation.toml``
holds the circuit breakers' thresholds (docs/reputation.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config.loader import ConfigError, read_toml, validate_layers
from gateway.config.schema import Duration, Stream, Strict
from gateway.config.units import is_hostname, is_key
from gateway.feedback.breakers import ALL, COMPLAINT, HARD_BOUNCE, Kind, Limits, Thresholds
from gateway.queue.retry import RetrySchedule
from gateway.shaping.automation import AutomationRule
from gateway.shaping.matching import DEFAULT, ProviderMatcher
from gateway.shaping.rates import Rate, parse_rate
from gateway.shaping.warmup import HealthRule, WarmupSchedule

POLICY_FILES = ("providers.toml", "warmup.toml", "reputation.toml")
UNLIMITED = "unlimited"


def _rate_or_unlimited(value: object) -> Rate | None:
    if value is None or value == UNLIMITED:
        return None
    return parse_rate(value)


def _limit_or_unlimited(value: object) -> int | None:
    if value is None or value == UNLIMITED:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1 or \"unlimited\", got {value!r}")
    return value


def _suffix(value: object) -> str:
    if not isinstance(value, str) or not is_hostname(value.strip(".").lower()):
        raise ValueError(f"bad host or domain suffix {value!r}")
    return value.strip(".").lower()


def _regex(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a regular expression")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regular expression {value!r}: {exc}") from None
    return value


OptionalRate = Annotated[Rate | None, BeforeValidator(_rate_or_unlimited)]
OptionalLimit = Annotated[int | None, BeforeValidator(_limit_or_unlimited)]
Suffix = Annotated[str, BeforeValidator(_suffix)]
Regex = Annotated[str, BeforeValidator(_regex)]


class RuleSpec(Strict):
    """``[[providers.NAME.rules]]``: a regex on the reply (code and text) and what to do."""

    match: Regex
    action: Literal["suspend", "throttle", "bounce"]
    duration: Duration | None = None
    rate: Annotated[Rate | None, BeforeValidator(parse_rate)] = None
    name: str = ""

    @model_validator(mode="after")
    def _needs(self) -> RuleSpec:
        if self.action in ("suspend", "throttle") and not self.duration:
            raise ValueError(f"action {self.action} needs a duration")
        if self.action == "throttle" and self.rate is None:
            raise ValueError("action throttle needs a rate, e.g. rate = \"10/min\"")
        if self.action != "throttle" and self.rate is not None:
            raise ValueError(f"rate only applies to action throttle, not {self.action}")
        if self.action == "bounce" and self.duration is not None:
            raise ValueError("duration only applies to actions suspend and throttle, not bounce")
        return self


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


class ProviderProfile(Strict):
    match_mx: list[Suffix] = Field(default_factory=list)
    match_domains: list[Suffix] = Field(default_factory=list)
    pool: str | None = None
    connection_limit: int = Field(default=10, ge=1, le=1000)
    provider_connection_limit: OptionalLimit = None
    max_deliveries_per_connection: int = Field(default=100, ge=1)
    max_message_rate: OptionalRate = None
    provider_max_message_rate: OptionalRate = None
    provider_pause: Duration = Field(default=60.0, gt=0)
    retry_first: Duration = Field(default=300.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    retry_max: Duration = Field(default=4 * 3600.0, gt=0)
    max_queue_age: Duration = Field(default=5 * 86400.0, gt=0)
    tls: Literal["opportunistic", "required", "disabled"] = "opportunistic"
    connect_timeout: Duration = Field(default=30.0, gt=0)
    command_timeout: Duration = Field(default=300.0, gt=0)
    idle_close: Duration = Field(default=5.0, ge=0)
    rules: list[RuleSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _retry_order(self) -> ProviderProfile:
        if self.retry_max < self.retry_first:
            raise ValueError("retry_max must not be shorter than retry_first")
        return self

    @property
    def retry(self) -> RetrySchedule:
        return RetrySchedule(first=self.retry_first, factor=self.retry_factor,
                             maximum=self.retry_max, max_age=self.max_queue_age)

    @property
    def automation(self) -> tuple[AutomationRule, ...]:
        return tuple(AutomationRule(_compiled(r.match), r.action, r.duration or 0.0, r.rate,
                                    r.name or r.match) for r in self.rules)


def _cap(value: object) -> int | None:
    if value == UNLIMITED:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a daily cap of at least 1 or \"unlimited\", got {value!r}")
    return value


Cap = Annotated[int | None, BeforeValidator(_cap)]


class HealthSpec(Strict):
    max_deferral_share: float = Field(default=0.1, gt=0, le=1)
    min_attempts: int = Field(default=20, ge=1)
    action: Literal["pause", "step_back"] = "pause"
    step_back_days: int = Field(default=3, ge=1)


class Warmup(Strict):
    health: HealthSpec = Field(default_factory=HealthSpec)
    schedules: dict[str, dict[str, Cap]] = Field(default_factory=dict)

    @field_validator("schedules")
    @classmethod
    def _days(cls, value: dict[str, dict[str, int | None]]) -> dict[str, dict[str, int | None]]:
        problems = [problem for name, days in value.items() for problem in _schedule_problems(name, days)]
        if problems:
            raise ValidationError.from_exception_data("warm-up schedules", problems)
        return value

    def schedule(self, provider: str) -> WarmupSchedule | None:
        days = self.schedules.get(provider) or self.schedules.get(DEFAULT)
        return None if days is None else WarmupSchedule.from_days({int(d): c for d, c in days.items()})

    @property
    def health_rule(self) -> HealthRule:
        h = self.health
        return HealthRule(h.max_deferral_share, h.min_attempts, h.action, h.step_back_days)


def _schedule_problems(name: str, days: Mapping[str, int | None]) -> list[InitErrorDetails]:
    """Day numbers must be distinct and caps must grow, ending at most once in "unlimited";
    each problem is located at the offending day's key (so the error names its line)."""
    def problem(day: str | None, message: str) -> InitErrorDetails:
        loc = (name,) if day is None else (name, day)
        return InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=days)

    if not days:
        return [problem(None, f"schedule {name!r} lists no days")]
    bad = [day for day in days if not day.isdigit() or int(day) < 1]
    if bad:
        return [problem(day, f"day {day!r} is not a day number (1, 2, ...)") for day in bad]
    problems: list[InitErrorDetails] = []
    seen: dict[int, str] = {}
    for day in days:
        if int(day) in seen:
            problems.append(problem(day, f"day {day!r} repeats day {seen[int(day)]!r}"))
        seen.setdefault(int(day), day)
    ordered = [seen[number] for number in sorted(seen)]
    for before, day in pairwise(ordered):
        if not _grows(days[before], days[day]):
            problems.append(problem(day, f"cap {_cap_text(days[day])} of day {day} does not grow over "
                                         f"{_cap_text(days[before])} of day {before}: caps must "
                                         "increase day by day"))
    return problems


def _grows(before: int | None, after: int | None) -> bool:
    """None is unlimited: nothing grows past it, and it is more than any number."""
    if before is None:
        return False
    return after is None or after > before


def _cap_text(cap: int | None) -> str:
    return UNLIMITED if cap is None else str(cap)


def _share(value: object) -> float:
    """A rate as operators write it ("0.3%") or as a share (0.003); 0 < share < 1."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"bad percentage {value!r}: expected e.g. \"0.3%\"") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        share = float(value)
        if share >= 1:
            raise ValueError(f"{value!r} is not a share: write \"{value}%\" or {value / 100:g}")
    else:
        raise ValueError(f"expected a percentage such as \"0.3%\", got {value!r}")
    if not 0 < share < 1:
        raise ValueError(f"{value!r} must be more than 0% and less than 100%")
    return share


Share = Annotated[float, BeforeValidator(_share)]


class BreakerLimits(Strict):
    """Warn and pause thresholds of one kind, and the base below which nothing is judged."""

    warn: Share
    pause: Share
    min_sent: int = Field(ge=1)
    min_events: int = Field(ge=1)

    @model_validator(mode="after")
    def _order(self) -> BreakerLimits:
        if self.warn > self.pause:
            raise ValueError("warn must not be above pause")
        return self

    @property
    def limits(self) -> Limits:
        return Limits(self.warn, self.pause, self.min_sent, self.min_events)


def _limits_model(limits: Limits) -> BreakerLimits:
    return BreakerLimits(warn=limits.warn, pause=limits.pause, min_sent=limits.min_sent,
                         min_events=limits.min_events)


class ProviderBreakers(Strict):
    """``[reputation.providers.NAME.KIND]``: what differs for one provider (key by key)."""

    hard_bounce: BreakerLimits | None = None
    complaint: BreakerLimits | None = None


_KINDS: tuple[tuple[str, Kind], ...] = (("hard_bounce", HARD_BOUNCE), ("complaint", COMPLAINT))


def _over(override: Any, general: Mapping[str, Any]) -> Any:
    if not isinstance(override, Mapping):
        return override
    merged = dict(override)
    for table, kind in _KINDS:
        if isinstance(merged.get(table), Mapping):
            base = general.get(table)
            start = base if isinstance(base, Mapping) else \
                _limits_model(Thresholds().limits(kind, "")).model_dump()
            merged[table] = {**start, **merged[table]}
    return merged


def _first_table(override: ProviderBreakers) -> tuple[str, ...]:
    """Where an override is written: its first kind table (a bare header has no line of its own)."""
    return next(((table,) for table, _ in _KINDS if getattr(override, table) is not None), ())


class Reputation(Strict):
    enabled: bool = True
    window: Duration = Field(default=86400.0, ge=300.0, le=30 * 86400.0)
    streams: list[Stream] = Field(default_factory=lambda: list[Stream](["marketing"]))
    hard_bounce: BreakerLimits = Field(default_factory=lambda: _limits_model(Thresholds().hard_bounce))
    complaint: BreakerLimits = Field(default_factory=lambda: _limits_model(Thresholds().complaint))
    providers: dict[str, ProviderBreakers] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _inherit_limits(cls, data: Any) -> Any:
        """Each kind's table starts from the built-in defaults and each provider's from the
        general table, key by key, before validation: set only what differs."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for table, kind in _KINDS:
            if isinstance(data.get(table), Mapping):
                out[table] = {**_limits_model(Thresholds().limits(kind, "")).model_dump(), **data[table]}
        if isinstance(data.get("providers"), Mapping):
            out["providers"] = {name: _over(override, out) for name, override in data["providers"].items()}
        return out

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(self.hard_bounce.limits, self.complaint.limits, {
            name: {kind: getattr(override, table).limits for table, kind in _KINDS
                   if getattr(override, table) is not None}
            for name, override in self.providers.items()})


_NOT_INHERITED = ("match_mx", "match_domains")


def _inherit(data: Any) -> Any:
    """Profiles start from [providers.default], key by key, before validation."""
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), Mapping):
        return data
    providers = dict(data["providers"])
    base = providers.get(DEFAULT)
    if not isinstance(base, Mapping):
        return data
    inherited = {k: v for k, v in base.items() if k not in _NOT_INHERITED}
    for name, profile in providers.items():
        if name != DEFAULT and isinstance(profile, Mapping):
            providers[name] = {**inherited, **profile}
    return {**data, "providers": providers}


class Policy(Strict):
    _matcher: ProviderMatcher = PrivateAttr()
    providers: dict[str, ProviderProfile] = Field(default_factory=lambda: {DEFAULT: ProviderProfile()})
    warmup: Warmup = Field(default_factory=Warmup)
    reputation: Reputation = Field(default_factory=Reputation)

    @model_validator(mode="before")
    @classmethod
    def _inherit_default(cls, data: Any) -> Any:
        return _inherit(data)

    @model_validator(mode="after")
    def _default_present(self) -> Policy:
        if DEFAULT not in self.providers:
            raise ValueError("a [providers.default] profile is required")
        for name, profile in self.providers.items():
            if not is_key(name):
                raise ValueError(f"bad provider name {name!r}: use letters, digits, '.', '_', '-'")
            if name == DEFAULT and (profile.match_mx or profile.match_domains):
                raise ValueError("[providers.default] matches everything else: no match_mx/match_domains")
        for name in self.warmup.schedules:
            if name not in self.providers:
                raise ValueError(f"warm-up schedule {name!r} names no provider profile")
        return self

    @model_validator(mode="after")
    def _reputation_providers(self) -> Policy:
        if ALL in self.providers:
            raise ValueError(f"provider name {ALL!r} is reserved (a campaign's whole tally)")
        unknown = [InitErrorDetails(
            type=PydanticCustomError("value_error", f"{name!r} names no provider profile of providers.toml"),
            loc=("reputation", "providers", name, *_first_table(override)), input=name)
            for name, override in self.reputation.providers.items() if name not in self.providers]
        if unknown:
            raise ValidationError.from_exception_data("reputation providers", unknown)
        return self

    @property
    def default(self) -> ProviderProfile:
        return self.providers[DEFAULT]

    def profile(self, provider: str) -> ProviderProfile:
        return self.providers.get(provider) or self.default

    def model_post_init(self, context: Any) -> None:
        self._matcher = ProviderMatcher({n: p.match_mx for n, p in self.providers.items()},
                                        {n: p.match_domains for n, p in self.providers.items()})

    @property
    def matcher(self) -> ProviderMatcher:
        return self._matcher


def load_policy(directory: Path) -> Policy:
    """Read the policy files that exist in ``directory`` (a missing dir is an error)."""
    if not directory.is_dir():
        raise ConfigError([f"{directory}: policy directory not found"])
    sources = [read_toml(directory / name) for name in POLICY_FILES if (directory / name).exists()]
    return validate_layers(Policy, sources)
