"""The schema of policies/bounces.toml: strict, so a bad edit is refused with file:key:line."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from gateway.config.schema import Strict
from gateway.feedback.verdicts import BounceClass, Severity

# Only these classes prove the address itself is dead; every other failure, whatever
# its code, says something about the message, the sender or the moment.
HARD_CLASSES = frozenset({BounceClass.USER_UNKNOWN, BounceClass.MAILBOX_DISABLED,
                          BounceClass.DOMAIN_NOT_FOUND, BounceClass.NO_MX})

_STATUS = re.compile(r"[245](?:\.\d{1,3}(?:\.\d{1,3})?)?\.?")


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    if re.compile(pattern, re.IGNORECASE).search(""):
        raise ValueError(f"regular expression {pattern!r} matches empty text (it would match every reply)")
    return pattern


def _status(value: str) -> str:
    if not _STATUS.fullmatch(value) or (value.count(".") < 2 and not value.endswith(".")):
        raise ValueError(f"bad status {value!r}: write an enhanced status code (\"5.1.1\") "
                         "or a prefix ending in a dot (\"5.1.\", \"5.\")")
    return value


def _name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", value):
        raise ValueError(f"bad rule name {value!r}: use lower-case letters, digits, '-', '_', '.'")
    return value


Regex = Annotated[str, AfterValidator(_regex)]
StatusPattern = Annotated[str, AfterValidator(_status)]


class Default(Strict):
    bounce_class: BounceClass = Field(default=BounceClass.OTHER, alias="class")
    severity: Severity = Severity.SOFT

    @model_validator(mode="after")
    def _hard_only_for_dead_addresses(self) -> Default:
        _check_severity(self.bounce_class, self.severity)
        return self


class Rule(Strict):
    name: Annotated[str, AfterValidator(_name)]
    bounce_class: BounceClass = Field(alias="class")
    severity: Severity
    status: list[StatusPattern] = Field(default_factory=list)
    code: list[Annotated[int, Field(ge=200, le=599)]] = Field(default_factory=list)
    text: list[Regex] = Field(default_factory=list)
    unless: list[Regex] = Field(default_factory=list)
    provider: list[str] = Field(default_factory=list)
    note: str = ""  # free text for the people who edit the file

    @model_validator(mode="after")
    def _sensible(self) -> Rule:
        if not (self.status or self.code or self.text):
            raise ValueError(f"rule {self.name!r} needs at least one of status, code, text")
        if self.bounce_class is BounceClass.COMPLAINT:
            raise ValueError("class 'complaint' comes from ARF reports only, never from a reply")
        _check_severity(self.bounce_class, self.severity)
        return self


class RuleFile(Strict):
    default: Default = Field(default_factory=Default)
    rule: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleFile:
        seen: set[str] = set()
        for rule in self.rule:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


def _check_severity(bounce_class: BounceClass, severity: Severity) -> None:
    if severity is Severity.HARD and bounce_class not in HARD_CLASSES:
        allowed = ", ".join(sorted(HARD_CLASSES))
        raise ValueError(f"severity 'hard' is only for classes that prove the address dead ({allowed}); "
                         f"class {bounce_class.value!r} must be 'soft'")
