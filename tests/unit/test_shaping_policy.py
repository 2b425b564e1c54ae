"""Policy files: shipped profiles, inheritance from default, strict validation with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import ConfigError, load_settings
from gateway.config.policy import Policy, load_policy
from gateway.shaping.pools import check_pool_bindings
from gateway.shaping.router import PoolSpec, SourceIp

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["gmail", "microsoft", "yahoo", "apple", "gmx", "t-online", "orange", "mailru", "yandex", "qq",
           "netease", "comcast", "default"]


def _write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text)


def _problems(directory: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_policy(directory)
    return "\n".join(caught.value.problems)


def test_shipped_profiles_load_and_match_real_mx_hosts() -> None:
    policy = load_policy(ROOT / "policies")
    assert set(SHIPPED) <= set(policy.providers)
    match = policy.matcher.match
    assert match("acme.org", ["acme-org.mail.protection.outlook.com"]) == "microsoft"
    assert match("acme.org", ["aspmx.l.google.com"]) == "gmail"
    assert match("aol.com", ["mx-aol.mail.gm0.yahoodns.net"]) == "yahoo"
    assert match("web.de", ["mx-ha03.web.de"]) == "gmx"
    assert match("163.com", ["163mx01.mxmail.netease.com"]) == "netease"
    assert match("foxmail.com", []) == "qq"
    assert match("me.com", ["mx01.mail.icloud.com"]) == "apple"
    for provider in SHIPPED[:-1]:
        assert policy.providers[provider].rules, f"{provider} ships no automation rule"
    assert policy.warmup.schedule("gmail") is not None


@pytest.mark.parametrize(("reply", "provider", "action"), [
    ("421-4.7.28 [127.0.0.10] Our system has detected an unusual rate of unsolicited mail", "gmail",
     "suspend"),
    ("550-5.7.26 This mail is unauthenticated, which poses a security risk", "gmail", "bounce"),
    ("451 4.7.650 The mail server [127.0.0.10] has been temporarily rate limited due to IP reputation",
     "microsoft", "suspend"),
    ("550 5.7.1 Unfortunately, messages from [127.0.0.10] weren't sent. (S3150)", "microsoft", "suspend"),
    ("421 RP-001 (COL004-MC1F8) Unfortunately, some messages from 127.0.0.10 weren't sent: unusual rate",
     "microsoft", "throttle"),
    ("421 4.7.0 [TSS04] Messages from 127.0.0.10 temporarily deferred due to unexpected volume",
     "yahoo", "suspend"),
])
def test_shipped_rules_know_real_replies(reply: str, provider: str, action: str) -> None:
    from gateway.shaping.automation import first_match

    rule = first_match(load_policy(ROOT / "policies").profile(provider).automation, reply)
    assert rule is not None and rule.action == action


def test_profiles_inherit_default_key_by_key() -> None:
    policy = Policy.model_validate({"providers": {
        "default": {"connection_limit": 7, "retry_first": "1m", "match_mx": []},
        "gmail": {"match_mx": ["google.com"], "max_message_rate": "100/min"}}})
    gmail = policy.providers["gmail"]
    assert (gmail.connection_limit, gmail.retry_first) == (7, 60.0)
    assert gmail.max_message_rate is not None and gmail.max_message_rate.per_second == pytest.approx(100 / 60)
    assert policy.default.match_mx == []


def test_unknown_key_and_bad_rate_name_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path, "providers.toml", "[providers.default]\nconnection_limit = 3\n\n"
           "[providers.gmail]\nmatch_mx = [\"google.com\"]\nmax_mesage_rate = \"5/s\"\n")
    assert f"{tmp_path}/providers.toml:6: providers.gmail.max_mesage_rate: unknown key" in _problems(tmp_path)
    _write(tmp_path, "providers.toml", "[providers.default]\n\n[providers.gmail]\nmax_message_rate = \"5/fortnight\"\n")
    assert "providers.toml:4: providers.gmail.max_message_rate: bad rate" in _problems(tmp_path)


def test_bad_rules_are_refused(tmp_path: Path) -> None:
    base = "[providers.default]\n\n[[providers.default.rules]]\n"
    _write(tmp_path, "providers.toml", base + "match = '4\\.7\\.28'\naction = \"suspend\"\n")
    assert "action suspend needs a duration" in _problems(tmp_path)
    _write(tmp_path, "providers.toml", base + "match = '(unclosed'\naction = \"bounce\"\n")
    assert "bad regular expression" in _problems(tmp_path)
    _write(tmp_path, "providers.toml", base + "match = 'x'\naction = \"throttle\"\nduration = \"1h\"\n")
    assert "needs a rate" in _problems(tmp_path)
    _write(tmp_path, "providers.toml", base + "match = 'x'\naction = \"explode\"\n")
    assert "providers.default.rules[0].action" in _problems(tmp_path)
    _write(tmp_path, "providers.toml", base + "match = '5\\.7\\.26'\naction = \"bounce\"\nduration = \"1h\"\n")
    assert ("providers.toml:3: providers.default.rules[0]: duration only applies to actions suspend and "
            "throttle, not bounce") in _problems(tmp_path)


def test_warmup_file_is_validated(tmp_path: Path) -> None:
    _write(tmp_path, "providers.toml", "[providers.default]\n")
    _write(tmp_path, "warmup.toml", "[warmup.schedules.default]\n1 = 50\nday2 = 100\n")
    assert "day 'day2' is not a day number" in _problems(tmp_path)
    _write(tmp_path, "warmup.toml", "[warmup.schedules.nosuch]\n1 = 50\n")
    assert "warm-up schedule 'nosuch' names no provider profile" in _problems(tmp_path)
    _write(tmp_path, "warmup.toml", "[warmup.schedules.default]\n1 = 0\n")
    assert "warmup.toml:2" in _problems(tmp_path)


def test_warmup_caps_must_grow_and_days_must_be_distinct(tmp_path: Path) -> None:
    _write(tmp_path, "providers.toml", "[providers.default]\n")
    _write(tmp_path, "warmup.toml", "[warmup.schedules.default]\n1 = 50\n01 = 60\n3 = 200\n2 = 200\n"
                                    "4 = \"unlimited\"\n5 = 9000\n")
    problems = _problems(tmp_path).splitlines()
    assert problems == [
        f"{tmp_path}/warmup.toml:3: warmup.schedules.default.01: day '01' repeats day '1'",
        f"{tmp_path}/warmup.toml:4: warmup.schedules.default.3: cap 200 of day 3 does not grow over 200 of "
        "day 2: caps must increase day by day",
        f"{tmp_path}/warmup.toml:7: warmup.schedules.default.5: cap 9000 of day 5 does not grow over "
        "unlimited of day 4: caps must increase day by day",
    ]
    _write(tmp_path, "warmup.toml", "[warmup.schedules.default]\n1 = 50\n2 = 100\n30 = \"unlimited\"\n")
    assert load_policy(tmp_path).warmup.schedule("gmail") is not None


def test_default_profile_is_required_and_matches_nothing_itself(tmp_path: Path) -> None:
    _write(tmp_path, "providers.toml", "[providers.gmail]\nmatch_mx = [\"google.com\"]\n")
    assert "a [providers.default] profile is required" in _problems(tmp_path)
    _write(tmp_path, "providers.toml", "[providers.default]\nmatch_mx = [\"google.com\"]\n")
    assert "no match_mx/match_domains" in _problems(tmp_path)


def test_pool_binding_must_name_a_configured_pool() -> None:
    policy = Policy.model_validate({"providers": {"default": {}, "qq": {"pool": "overseas"}}})
    pools = {"default": PoolSpec("default", (SourceIp("127.0.0.10", "mta.example"),))}
    with pytest.raises(ConfigError, match=r"providers\.qq\.pool: no pool named 'overseas'"):
        check_pool_bindings(policy, pools)
    check_pool_bindings(policy, {**pools, "overseas": PoolSpec("overseas", pools["default"].ips)})


def test_without_a_default_pool_every_stream_needs_a_pool(tmp_path: Path) -> None:
    ips = '[{ address = "127.0.0.10", helo = "mta1.example.com" }]'
    config = tmp_path / "config.toml"
    config.write_text(f'[[pools]]\nname = "transactional"\nstreams = ["transactional"]\nips = {ips}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings([config])
    assert caught.value.problems == [
        f"{config}: pools: stream marketing is in no pool's streams and no pool is named \"default\": "
        "add it to a pool's streams or name a pool \"default\""]
    config.write_text(config.read_text() + f'[[pools]]\nname = "bulk"\nstreams = ["marketing"]\nips = {ips}\n')
    assert [pool.name for pool in load_settings([config]).pools] == ["transactional", "bulk"]
    config.write_text(f'[[pools]]\nname = "default"\nips = {ips}\n')
    assert load_settings([config]).pools[0].streams == []
