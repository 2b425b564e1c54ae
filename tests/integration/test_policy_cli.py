"""`gateway policy show|test` and `gateway reload` as a user runs them."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _config(tmp_path: Path, policies: Path | None = None, extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite:///{tmp_path}/g.db"\n[policy]\ndir = "{policies or ROOT / "policies"}"\n'
        f'[process]\npid_file = "{tmp_path}/gateway.pid"\n'
        '[[pools]]\nname = "default"\nips = [{ address = "127.0.0.10", helo = "mta1.example.com" },\n'
        '  { address = "127.0.0.11", helo = "mta2.example.com", weight = 3, warmup_start = 2099-01-01 }]\n'
        + extra)
    return config


def test_policy_show_prints_the_merged_profile(tmp_path: Path) -> None:
    result = gateway("policy", "show", "gmail", "-c", str(_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "[providers.gmail]  # default merged in" in result.stdout
    assert 'max_message_rate = "3000/h"' in result.stdout
    assert 'retry_max = "4h"' in result.stdout  # inherited from [providers.default]
    assert "rule 'gmail rate limit': match '4\\.7\\.28' -> suspend, duration = \"1h\"" in result.stdout
    unknown = gateway("policy", "show", "gmial", "-c", str(_config(tmp_path)))
    assert unknown.returncode == 2 and unknown.stderr.startswith("gateway: no provider profile 'gmial'")


def test_policy_test_names_provider_pool_and_limits(tmp_path: Path) -> None:
    result = gateway("policy", "test", "bob@acme.example", "--mx", "acme-example.mail.protection.outlook.com",
                     "-c", str(_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "provider: microsoft (MX host acme-example.mail.protection.outlook.com matches" in result.stdout
    assert "pool:     default" in result.stdout
    assert "127.0.0.11 helo mta2.example.com weight 3 (warm-up day 1: 20 to microsoft today)" in result.stdout
    assert "5 connections and 1000/h per source IP" in result.stdout
    assert "note: no database at" in result.stdout and not (tmp_path / "g.db").exists()  # none created
    bad = gateway("policy", "test", "not an address@", "--mx", "x.example", "-c", str(_config(tmp_path)))
    assert bad.returncode == 2 and "bad address" in bad.stderr


def test_reload_checks_the_policy_then_signals_the_pid(tmp_path: Path) -> None:
    marker = tmp_path / "hup"
    with subprocess.Popen([sys.executable, "-c", (
            "import signal, sys, time, pathlib\n"
            f"signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path({str(marker)!r}).write_text('x'), sys.exit(0)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True) as waiter:
        try:
            assert waiter.stdout is not None and waiter.stdout.readline() == "ready\n"
            (tmp_path / "gateway.pid").write_text(f"{waiter.pid}\n")
            result = gateway("reload", "-c", str(_config(tmp_path)))
            assert result.returncode == 0, result.stderr
            assert f"asked gateway process {waiter.pid} to reload" in result.stdout
            waiter.wait(10)
            assert marker.exists()
        finally:
            if waiter.poll() is None:
                waiter.send_signal(signal.SIGTERM)
                waiter.wait(10)


def test_reload_refuses_a_bad_policy_without_signalling(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    text = (policies / "providers.toml").read_text().replace('max_message_rate = "3000/h"',
                                                             'max_message_rate = "3000/hr"')
    (policies / "providers.toml").write_text(text)
    (tmp_path / "gateway.pid").write_text("999999\n")
    result = gateway("reload", "-c", str(_config(tmp_path, policies)))
    assert result.returncode == 2
    line = next(n for n, t in enumerate(text.splitlines(), 1) if '"3000/hr"' in t)
    assert f"providers.toml:{line}: providers.gmail.max_message_rate: bad rate" in result.stderr
    stale = gateway("reload", "-c", str(_config(tmp_path)))
    assert stale.returncode == 2 and "process 999999 is not running (stale pid file)" in stale.stderr


def test_policy_test_shows_the_held_back_day_the_gateway_saved(tmp_path: Path) -> None:
    start = datetime.now(UTC).date() - timedelta(days=9)  # day 10 today
    config = _config(tmp_path).read_text().replace("2099-01-01", start.isoformat())
    (tmp_path / "config.toml").write_text(config)
    assert gateway("db", "upgrade", "-c", str(tmp_path / "config.toml")).returncode == 0
    yesterday, today = datetime.now(UTC).date() - timedelta(days=1), datetime.now(UTC).date()
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute("INSERT INTO warmup_holds VALUES ('127.0.0.11', 'microsoft', 4, ?)", (yesterday.isoformat(),))
        db.execute("INSERT INTO warmup_sends VALUES ('127.0.0.11', 'microsoft', ?, 17)", (today.isoformat(),))
        db.execute("INSERT INTO warmup_holds VALUES ('127.0.0.11', 'gmail', 2, ?)", (today.isoformat(),))
    args = ("-c", str(tmp_path / "config.toml"))
    ms = gateway("policy", "test", "bob@hotmail.com", "--mx", "hotmail-com.olc.protection.outlook.com", *args)
    assert ms.returncode == 0, ms.stderr
    assert (f"weight 3 (warm-up day 6: 250 to microsoft today, 17 sent; 4 day(s) held back since "
            f"{yesterday})") in ms.stdout
    gm = gateway("policy", "test", "bob@gmail.com", "--mx", "gmail-smtp-in.l.google.com", *args)
    assert "weight 3 (warm-up held back today: from tomorrow day 9: 2000 to gmail, 2 day(s) held back)" \
        in gm.stdout
