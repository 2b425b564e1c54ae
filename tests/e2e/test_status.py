"""`gateway status` against a running gateway whose only source IP a provider suspended, and
after that gateway stopped (the database part only, exit 0, no traceback)."""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

from gateway.cli.status_cmd import NEEDS_LIVE
from gateway.sandbox.sink import ReplyScript
from tests.e2e.conftest import StartGateway

TOKEN = "status-" + "c" * 40
REFUSAL = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
ROOT = Path(__file__).resolve().parents[2]


def _submit(port: int, recipients: list[str]) -> None:
    message = (b"From: <shop@example.com>\r\nSubject: status\r\nX-Gateway-Stream: transactional\r\n\r\n"
               b"hello\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("shop@example.com", recipients, message)


def _status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A proxy in the environment must not be used: it would be handed the admin token.
    proxy = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")}
    env = {name: value for name, value in os.environ.items() if name.lower() != "no_proxy"}
    return subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**env, **proxy, "COLUMNS": "200"})


async def test_status_shows_a_suspension_live_and_the_database_part_once_stopped(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    token_file = tmp_path / "api.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    running = await start_gateway(
        {"http": {"admin_listen": "127.0.0.1:0", "api_token_file": str(token_file)}},
        policy={"retry_first": "1h", "retry_max": "2h",
                "rules": [{"match": r"4\.7\.28", "action": "suspend", "duration": "1h", "name": "rate-limit"}]})
    running.sink.script = ReplyScript().on_data(REFUSAL)
    await asyncio.to_thread(_submit, running.port, ["first@example.net", "second@example.net"])
    await running.wait_for_event("first@example.net", "deferred")
    admin = running.gateway.admin
    assert admin is not None
    for _ in range(500):
        if admin.port is not None:
            break
        await asyncio.sleep(0.01)
    port = admin.port
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/gateway.db"\n'
                      f'[http]\nadmin_listen = "127.0.0.1:{port}"\napi_token_file = "{token_file}"\n')

    live = await asyncio.to_thread(_status, config)
    assert live.returncode == 0, live.stderr
    assert "node test-node" in live.stdout
    assert {"suspensions", "providers (this node)"} <= {line.strip() for line in live.stdout.splitlines()}
    suspension = next(line for line in live.stdout.splitlines() if "127.0.0.10" in line and "rule" in line)
    assert "default" in suspension and "rule rate-limit: 421 4.7.28" in suspension
    assert "queue: 2 deliveries (" in live.stdout and "deferred" in live.stdout
    assert NEEDS_LIVE not in live.stdout
    raw = json.loads((await asyncio.to_thread(_status, config, "--json")).stdout)
    assert raw["live"] is True
    assert [(s["provider"], s["source_ip"]) for s in raw["suspensions"]] == [("default", "127.0.0.10")]

    wrong = tmp_path / "wrong.token"
    wrong.write_text("wrong-" + "e" * 40)
    wrong.chmod(0o600)
    refused_config = tmp_path / "refused.toml"
    refused_config.write_text(config.read_text().replace(str(token_file), str(wrong)))
    refused = await asyncio.to_thread(_status, refused_config)
    assert refused.returncode == 0, refused.stderr
    assert "database only (gateway not reached)" in refused.stdout and "queue: 2 deliveries (" in refused.stdout
    assert (f"{NEEDS_LIVE} (http://127.0.0.1:{port}/api/status refused the token of [http] api_token_file "
            "(401: invalid bearer token))") in refused.stdout
    assert "Traceback" not in refused.stderr + refused.stdout

    await running.gateway.stop()
    stopped = await asyncio.to_thread(_status, config)
    assert stopped.returncode == 0, stopped.stderr
    assert "database only (gateway not reached)" in stopped.stdout
    assert "queue: 2 deliveries (" in stopped.stdout
    assert f"{NEEDS_LIVE} (no gateway answers at http://127.0.0.1:{port}/api/status)" in stopped.stdout
    assert not any(line.strip() in ("suspensions", "providers (this node)") for line in stopped.stdout.splitlines())
    assert "Traceback" not in stopped.stderr + stopped.stdout
