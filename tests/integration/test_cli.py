"""The `gateway` command line as a user runs it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.smtp.passwords import verify_password
from gateway.storage.migrate import head_revision

ROOT = Path(__file__).resolve().parents[2]


def gateway(*args: str, stdin: str = "", cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def _key_overlay(tmp_path: Path, key_file: Path) -> Path:
    overlay = tmp_path / "keys.toml"
    overlay.write_text(f'[[domains]]\nname = "example.com"\ndkim = [{{ selector = "s1", key_file = "{key_file}" }}]\n'
                       f'[tokens]\ndefault_secret_file = "{tmp_path}/token.key"\n')
    return overlay


def test_check_config_accepts_the_example_once_its_key_exists(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "example.com.s1.pem"
    overlay = _key_overlay(tmp_path, key_file)
    missing = gateway("check-config", "-c", "config.example.toml", "-c", str(overlay))
    assert missing.returncode == 2
    assert missing.stderr == (f"gateway: domain example.com, selector s1: {key_file}: file not found; create it "
                              f"with `gateway dkim keygen example.com --selector s1 --algorithm rsa "
                              f"--key-file {key_file}`\n")
    assert gateway("dkim", "keygen", "example.com", "--selector", "s1", "--key-file", str(key_file)).returncode == 0
    result = gateway("check-config", "-c", "config.example.toml", "-c", str(overlay))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and "1 DKIM signing key(s) for 1 domain(s)" in result.stdout


def test_check_config_refuses_a_readable_key(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    gateway("dkim", "keygen", "example.com", "--selector", "s1", "--key-file", str(key_file))
    key_file.chmod(0o644)
    result = gateway("check-config", "-c", "config.example.toml", "-c", str(_key_overlay(tmp_path, key_file)))
    assert result.returncode == 2
    assert result.stderr == (f"gateway: domain example.com, selector s1: {key_file}: group or others have access "
                             f"(mode 0644); run `chmod 600 {key_file}`\n")


def test_dkim_keygen_prints_the_record_and_refuses_bad_input(tmp_path: Path) -> None:
    result = gateway("dkim", "keygen", "Example.COM", "--selector", "e1", "--algorithm", "ed25519", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = [line for line in result.stdout.splitlines() if not line.startswith(";")]
    assert record.startswith('e1._domainkey.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=')
    assert (tmp_path / "keys" / "example.com.e1.pem").stat().st_mode & 0o777 == 0o600
    again = gateway("dkim", "keygen", "example.com", "--selector", "e1", "--algorithm", "ed25519", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    weak = gateway("dkim", "keygen", "example.com", "--selector", "w", "--bits", "1024", cwd=tmp_path)
    assert weak.returncode == 2 and "1024 bits refused" in weak.stderr
    bad = gateway("dkim", "keygen", "not a domain", "--selector", "s1", cwd=tmp_path)
    assert bad.returncode == 2 and "bad domain name" in bad.stderr
    for result in (again, weak, bad):
        assert "Traceback" not in result.stderr


def test_dkim_rotate_prepares_a_second_selector_and_show_prints_both(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "example.com.s1.pem"
    gateway("dkim", "keygen", "example.com", "--selector", "s1", "--key-file", str(key_file))
    overlay = _key_overlay(tmp_path, key_file)
    rotated = gateway("dkim", "rotate", "example.com", "--selector", "s2", "-c", "config.example.toml",
                      "-c", str(overlay))
    assert rotated.returncode == 0, rotated.stderr
    new_key = tmp_path / "keys" / "example.com.s2.pem"
    assert new_key.exists()
    assert f'{{ selector = "s2", algorithm = "rsa", key_file = "{new_key}", sign = false }}' in rotated.stdout
    assert "s1 keeps signing meanwhile" in rotated.stdout
    overlay.write_text(overlay.read_text().replace(
        "}]", f'}}, {{ selector = "s2", key_file = "{new_key}", sign = false }}]'))
    shown = gateway("dkim", "show", "example.com", "-c", "config.example.toml", "-c", str(overlay))
    assert shown.returncode == 0, shown.stderr
    assert "; s1 (rsa, signing," in shown.stdout and "; s2 (rsa, not signing," in shown.stdout
    assert shown.stdout.count("._domainkey.example.com. IN TXT") == 2
    again = gateway("dkim", "rotate", "example.com", "--selector", "s2", "-c", "config.example.toml",
                    "-c", str(overlay))
    assert again.returncode == 2 and "already configured" in again.stderr


def test_check_config_names_file_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nlisten = ["127.0.0.1:2525"]\nmax_recipents = 10\nidle_timeout = "forever"\n')
    result = gateway("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert f"gateway: {bad}:3: smtp.max_recipents: unknown key" in result.stderr.splitlines()
    assert f"{bad}:4: smtp.idle_timeout: bad duration 'forever'" in result.stderr
    assert "Traceback" not in result.stderr


def test_passwd_reads_stdin_and_prints_a_verifiable_hash() -> None:
    result = gateway("passwd", stdin="correct horse battery\n")
    assert result.returncode == 0
    assert verify_password("correct horse battery", result.stdout.strip())
    short = gateway("passwd", stdin="short\n")
    assert short.returncode == 2 and "too short" in short.stderr


@pytest.mark.slow
def test_db_upgrade_queue_and_trace_on_an_empty_database(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/g.db"\n[policy]\ndir = "{ROOT / "policies"}"\n')
    upgrade = gateway("db", "upgrade", "-c", str(config))
    assert upgrade.returncode == 0 and f"revision {head_revision()}" in upgrade.stdout
    assert gateway("queue", "list", "-c", str(config)).stdout.strip() == "queue is empty"
    trace = gateway("trace", "nobody@example.net", "-c", str(config))
    assert trace.returncode == 1 and "nothing recorded for nobody@example.net" in trace.stdout
    assert gateway("queue", "retry", "-c", str(config)).stdout.strip() == "0 deliveries made due now"


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[smtp]\nlisten = ["127.0.0.1:0"]\n[storage]\nurl = "sqlite:///{tmp_path}/g.db"\n'
                      f'[http]\nadmin_listen = "off"\npublic_listen = "off"\n[policy]\ndir = "{ROOT / "policies"}"\n'
                      f'[tokens]\ndefault_secret_file = "{tmp_path}/token.key"\n')
    result = gateway("serve", "-c", str(config))
    assert result.returncode == 1
    assert "run `gateway db upgrade -c CONFIG` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_verb_and_missing_config_are_usage_errors() -> None:
    assert gateway("frobnicate").returncode == 2
    missing = gateway("check-config", "-c", "/nonexistent/gateway.toml")
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_check_config_checks_the_api_token_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "example.com.s1.pem"
    gateway("dkim", "keygen", "example.com", "--selector", "s1", "--key-file", str(key_file))
    token = tmp_path / "api.token"
    token.write_text("t" * 40 + "\n")
    token.chmod(0o644)
    overlay = _key_overlay(tmp_path, key_file)
    overlay.write_text(overlay.read_text() + f'[http]\napi_token_file = "{token}"\n')
    result = gateway("check-config", "-c", "config.example.toml", "-c", str(overlay))
    assert result.returncode == 2 and "group or others have access" in result.stderr
    token.chmod(0o600)
    assert gateway("check-config", "-c", "config.example.toml", "-c", str(overlay)).returncode == 0
