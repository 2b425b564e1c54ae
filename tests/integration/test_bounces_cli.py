"""`gateway bounces classify|test` as a user runs them (a real subprocess for the contract)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "policies" / "bounces.toml"
TOKEN = "abcdefghijklmnopqrstuvwxyz234567abcdefgh"

DSN = f"""From: MAILER-DAEMON@mx.sender.example
To: b+{TOKEN}@bounces.example.com
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.example

Final-Recipient: rfc822; gone@example.net
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown

Final-Recipient: rfc822; busy@example.net
Action: failed
Status: 5.7.1
Diagnostic-Code: smtp; 554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using a blocklist
--b--
""".replace("\n", "\r\n")

AUTO = "From: a@example.com\r\nSubject: Out of Office\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n"
HUMAN = "From: a@example.com\r\nSubject: Re: news\r\n\r\nThanks!\r\n"


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in (("dsn.eml", DSN), ("auto.eml", AUTO), ("human.eml", HUMAN)):
        path = tmp_path / name
        path.write_bytes(text.encode())
        paths[name] = path
    return paths


def _gateway(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


def test_classify_json_contract(samples: dict[str, Path]) -> None:
    done = _gateway("bounces", "classify", "--json", "--bounce-domain", "bounces.example.com",
                    *(str(p) for p in samples.values()))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["kind"] for line in lines] == ["dsn", "auto-reply", "not-bounce"]
    dsn = lines[0]
    assert dsn["path"] == str(samples["dsn.eml"])
    assert [{k: r[k] for k in ("address", "status", "class", "severity")} for r in dsn["recipients"]] == [
        {"address": "gone@example.net", "status": "5.1.1", "class": "user-unknown", "severity": "hard"},
        {"address": "busy@example.net", "status": "5.7.1", "class": "spam-block", "severity": "soft"}]
    assert dsn["verp_tokens"] == [TOKEN]
    assert lines[1]["recipients"] == [] and lines[2]["recipients"] == []


def test_classify_table_and_unreadable_path(samples: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.eml"
    code = main(["bounces", "classify", "--rules", str(RULES), str(missing), str(samples["dsn.eml"])])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip() == f"gateway: {missing}: cannot read: No such file or directory"
    header, *rows = out.splitlines()
    assert header.split() == ["PATH", "KIND", "ADDRESS", "ACTION", "STATUS", "CLASS", "SEVERITY", "RULE"]
    assert rows[0].split()[1:7] == ["dsn", "gone@example.net", "failed", "5.1.1", "user-unknown", "hard"]


def test_classify_a_directory(samples: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    directory = samples["dsn.eml"].parent
    assert main(["bounces", "classify", "--json", "--rules", str(RULES), str(directory)]) == 0
    paths = [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()]
    assert paths == sorted(str(p) for p in samples.values())


def test_test_verb_explains_the_rule() -> None:
    done = _gateway("bounces", "test", "550 5.1.1 <a@example.net>: Recipient address rejected: User unknown")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "verdict: hard user-unknown (status 5.1.1)"
    assert "rule:    user-unknown  [policies/bounces.toml:" in done.stdout
    assert "why:     text matched 'User unknown'" in done.stdout


def test_test_verb_json_and_provider(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "ms"\nclass = "spam-block"\nseverity = "soft"\n'
                     'provider = ["microsoft"]\ntext = ["S3150"]\n')
    assert main(["bounces", "test", "--json", "--rules", str(rules), "550 S3150"]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == "default"
    assert main(["bounces", "test", "--json", "--rules", str(rules), "--provider", "microsoft",
                 "550 S3150"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["rule"], shown["class"], shown["where"]) == ("ms", "spam-block", f"{rules}:1")


def test_test_verb_delayed_is_soft(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bounces", "test", "--rules", str(RULES), "--delayed", "550 5.1.1 user unknown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("verdict: soft user-unknown")
    assert "read as a delayed DSN: never hard" in out


def test_outside_the_checkout_the_shipped_rules_apply(tmp_path: Path) -> None:
    done = _gateway("bounces", "test", "550 5.1.1 user unknown", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"[{RULES}:" in done.stdout and "verdict: hard user-unknown" in done.stdout


def test_rules_file_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    done = _gateway("bounces", "test", "--rules", str(missing), "550 x", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gateway: {missing}: bounce rule file not found "
                                   "(give --rules FILE or -c CONFIG)")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nclass = "policy"\nseverity = "hard"\ntext = ["x"]\n')
    done = _gateway("bounces", "test", "--rules", str(bad), "550 x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"gateway: {bad}:1: rule[0]: severity 'hard' is only for classes")


def test_rules_come_from_the_policy_dir_of_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies = tmp_path / "pol"
    policies.mkdir()
    (policies / "bounces.toml").write_text('[default]\nclass = "network"\nseverity = "soft"\n')
    config = tmp_path / "gw.toml"
    config.write_text(f'[policy]\ndir = "{policies}"\n[bounce]\ndomain = "bounces.example.com"\n')
    assert main(["bounces", "test", "-c", str(config), "--json", "550 5.1.1 user unknown"]) == 0
    assert json.loads(capsys.readouterr().out)["class"] == "network"
