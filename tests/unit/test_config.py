from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import ConfigError, load_settings
from gateway.config.policy import load_policy
from gateway.config.units import parse_duration, parse_host_port, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("5m", 300), ("4h", 14400), ("5d", 432000), ("1h30m", 5400), (90, 90), ("250ms", 0.25),
])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "", "m", "-5s", "5x", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "size"), [("25MB", 25_000_000), ("512KiB", 524288), (100, 100), ("1 GB", 10**9)])
def test_sizes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


def test_host_port_forms() -> None:
    assert parse_host_port("127.0.0.1:2525").port == 2525
    assert parse_host_port("[::1]:25").host == "::1"
    assert parse_host_port("mx.example.net", 25).port == 25
    for bad in ("127.0.0.1", "host:99999", "bad host:25", "::1:25"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_key_named_with_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", '[smtp]\nhostname = "gw.example.com"\nmax_recipient = 5\n')
    with pytest.raises(ConfigError) as caught:
        load_settings([path])
    assert caught.value.problems == [f"{path}:3: smtp.max_recipient: unknown key"]


def test_every_problem_reported_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", """
[smtp]
idle_timeout = "soon"
listen = ["127.0.0.1:99999"]
[[pools]]
name = "p"
ips = [{ address = "127.0.0.300", helo = "mta.example.com" }]
[dns.mx_overrides]
"example.net" = ["bad host:25"]
""")
    with pytest.raises(ConfigError) as caught:
        load_settings([path])
    problems = caught.value.problems
    assert any(p.startswith(f"{path}:3: smtp.idle_timeout: bad duration") for p in problems)
    assert any(p.startswith(f"{path}:4: smtp.listen[0]: bad port") for p in problems)
    assert any(p.startswith(f"{path}:7: pools[0].ips[0].address: bad IP address") for p in problems)
    assert any(p.startswith(f"{path}:9: dns.mx_overrides.example.net[0]: bad host") for p in problems)
    assert len(problems) == len(set(problems)) == 4


def test_overlay_overrides_key_by_key(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.toml", '[smtp]\nhostname = "a.example.com"\nmax_recipients = 10\n')
    overlay = _write(tmp_path, "local.toml", "[smtp]\nmax_recipients = 20\n")
    settings = load_settings([base, overlay])
    assert settings.smtp.hostname == "a.example.com"
    assert settings.smtp.max_recipients == 20


def test_error_points_at_the_overlay_that_broke_it(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.toml", "[smtp]\nmax_recipients = 10\n")
    overlay = _write(tmp_path, "local.toml", '\n\n[smtp]\nmax_recipients = "many"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings([base, overlay])
    assert caught.value.problems[0].startswith(f"{overlay}:4: smtp.max_recipients:")


def test_trusted_local_listener_must_be_loopback(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", '[smtp]\nlisten_trusted_local = ["0.0.0.0:587"]\n')
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_settings([path])


def test_account_needs_scrypt_hash_and_sender_domains(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.toml", '[[smtp.accounts]]\nusername = "u"\npassword_hash = "secret"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings([path])
    text = "\n".join(caught.value.problems)
    assert "password_hash: expected a hash printed by `gateway passwd`" in text
    assert "allowed_from_domains: required key is missing" in text


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings([_write(tmp_path, "c.toml", "[smtp\n")])
    with pytest.raises(ConfigError, match="file not found"):
        load_settings([tmp_path / "nope.toml"])


def test_shipped_policy_and_example_config_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    policy = load_policy(root / "policies")
    assert policy.default.retry.first == 300
    assert policy.default.retry.max_age == 5 * 86400
    settings = load_settings([root / "config.example.toml"])
    assert settings.smtp.listen[0].port == 2525


def test_policy_rejects_bad_values(tmp_path: Path) -> None:
    _write(tmp_path, "providers.toml", '[providers.default]\nretry_first = "1h"\nretry_max = "5m"\n')
    with pytest.raises(ConfigError, match="retry_max must not be shorter"):
        load_policy(tmp_path)


@pytest.mark.parametrize(("toml", "problem"), [
    ('[[domains]]\nname = "example.com"\ndkim = [{ selector = "a", key_file = "a.pem" }, '
     '{ selector = "b", key_file = "b.pem" }]\n',
     "selectors a, b all sign with rsa; set sign = false on all but one"),
    ('[[domains]]\nname = "example.com"\ndkim = [{ selector = "a", key_file = "a.pem" }, '
     '{ selector = "A", algorithm = "ed25519", key_file = "b.pem" }]\n', "duplicate selector 'a'"),
    ('[[domains]]\nname = "example.com"\ndkim = [{ selector = "s_1", key_file = "a.pem" }]\n',
     "bad DKIM selector 's_1'"),
    ('[[domains]]\nname = "example.com"\ndkim = [{ selector = "s1", algorithm = "dsa", key_file = "a.pem" }]\n',
     "algorithm: Input should be 'rsa' or 'ed25519'"),
    ('[signing]\nunsigned = "maybe"\n', "unsigned: Input should be 'refuse' or 'pass'"),
    ('[headers]\nlist_header = "X List"\n', "bad header field name 'X List'"),
    ('[headers]\nlist_unsubscribe = "drop"\n', "Input should be 'replace' or 'keep'"),
    ('[tokens]\ncurrent = 2\nkeys = [{ id = 1, secret_file = "t" }]\n', "current = 2 names no key in tokens.keys"),
    ('[tokens]\nkeys = [{ id = 300, secret_file = "t" }]\n', "less than or equal to 255"),
])
def test_signing_header_and_token_settings_are_validated(tmp_path: Path, toml: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([_write(tmp_path, "c.toml", toml)])
    assert problem in "\n".join(caught.value.problems)


def test_dual_signing_and_waiting_selectors_are_accepted(tmp_path: Path) -> None:
    settings = load_settings([_write(tmp_path, "c.toml", (
        '[[domains]]\nname = "Example.COM"\nsubdomains = true\ndkim = [\n'
        '  { selector = "r1", key_file = "r1.pem" },\n'
        '  { selector = "e1", algorithm = "ed25519", key_file = "e1.pem" },\n'
        '  { selector = "r2", key_file = "r2.pem", sign = false },\n]\n'))])
    [domain] = settings.domains
    assert domain.name == "example.com" and domain.subdomains
    assert [(k.selector, k.algorithm, k.sign) for k in domain.dkim] == [
        ("r1", "rsa", True), ("e1", "ed25519", True), ("r2", "rsa", False)]


@pytest.mark.parametrize(("toml", "problem"), [
    ('[[smtp.accounts]]\nusername = "u"\npassword_hash = "scrypt$x"\nallowed_from_domains = ["example.com"]\n'
     'default_list = "Weekly News: EU"\n', "bad list key 'Weekly News: EU'"),
    ('[http]\npublic_url = "https://gw.example.com/u>, <https://evil.example"\n', "bad public_url"),
    ('[http]\npublic_url = "ftp://gw.example.com"\n', "bad public_url"),
])
def test_values_that_end_up_in_headers_are_validated(tmp_path: Path, toml: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings([_write(tmp_path, "c.toml", toml)])
    assert problem in "\n".join(caught.value.problems)
