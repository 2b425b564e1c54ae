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


def test_check_config_accepts_the_example() -> None:
    result = gateway("check-config", "-c", "config.example.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


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
                      f'[http]\nadmin_listen = "off"\n[policy]\ndir = "{ROOT / "policies"}"\n'
                      f'[tokens]\ndefault_secret_file = "{tmp_path}/token.key"\n')
    result = gateway("serve", "-c", str(config))
    assert result.returncode == 1
    assert "run `gateway db upgrade -c CONFIG` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_verb_and_missing_config_are_usage_errors() -> None:
    assert gateway("frobnicate").returncode == 2
    missing = gateway("check-config", "-c", "/nonexistent/gateway.toml")
    assert missing.returncode == 2 and "file not found" in missing.stderr
