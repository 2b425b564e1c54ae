"""The [bounce], [complaints] and [[webhooks]] settings: defaults and precise errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config.schema import Settings


def settings(**tables: Any) -> Settings:
    return Settings.model_validate({"bounce": {"domain": "bounces.example.com"}, **tables})


def test_defaults_are_five_soft_bounces_over_a_week_for_thirty_days() -> None:
    bounce = settings().bounce
    assert (bounce.soft_bounce_limit, bounce.soft_bounce_days, bounce.soft_bounce_suppress_for) == (
        5, 7 * 86400, 30 * 86400)
    assert settings().complaints.scope == "list" and settings().webhooks == []


@pytest.mark.parametrize(("tables", "message"), [
    ({"bounce": {"domain": "bounces.example.com", "soft_bounce_days": "a week"}}, "bad duration"),
    ({"bounce": {"domain": "bounces.example.com", "soft_bounce_limit": 0}}, "greater than or equal to 1"),
    ({"bounce": {"domain": "bounces.example.com", "soft_bounce_days": "70d", "soft_bounce_decay": "1d"}},
     "the limit is unreachable"),
    ({"complaints": {"scope": "campaign"}}, "'list' or 'global'"),
    ({"complaints": {"trusted_networks": ["10.0.0.1/8"]}}, "bad network"),
    ({"complaints": {"fbl_addresses": ["fbl@example.org"]}}, "not at the bounce domain"),
    ({"complaints": {"fbl_adresses": ["fbl"]}}, "Extra inputs are not permitted"),
    ({"webhooks": [{"name": "crm", "url": "ftp://x", "secret_file": "k"}]}, "bad webhook url"),
    ({"webhooks": [{"name": "crm", "url": "https://x/h", "secret_file": "k", "events": ["opened"]}]},
     "'delivered'"),
    ({"webhooks": [{"name": "crm", "url": "https://x/h", "secret_file": "k", "retry_min": "5m",
                    "retry_max": "1s"}]}, "retry_max is shorter than retry_min"),
    ({"webhooks": [{"name": "crm", "url": "https://x/h", "secret_file": "k"},
                   {"name": "crm", "url": "https://y/h", "secret_file": "k"}]}, "duplicate webhook 'crm'"),
])
def test_bad_values_are_refused_with_a_clear_reason(tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        settings(**tables)
    assert message in str(error.value)


def test_a_webhook_starts_with_new_events_unless_told_from_start_and_parks_after_limits() -> None:
    hook = {"name": "crm", "url": "https://x/h", "secret_file": "k"}
    [default] = settings(webhooks=[hook]).webhooks
    assert (default.start, default.max_attempts, default.max_age) == ("newest", 50, 86400)
    [backfill] = settings(webhooks=[{**hook, "from": "start", "max_attempts": 5, "max_age": "1h"}]).webhooks
    assert (backfill.start, backfill.max_attempts, backfill.max_age) == ("start", 5, 3600)
    with pytest.raises(ValidationError, match="'newest' or 'start'"):
        settings(webhooks=[{**hook, "from": "yesterday"}])
