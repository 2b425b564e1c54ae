"""SIGKILL in the middle of intake and delivery loses no acknowledged message.

A gateway subprocess receives messages from parallel senders while a slow sink
keeps deliveries in flight; it is killed with SIGKILL, restarted, and every
message that got a 250 must reach the sink (duplicates allowed: at-least-once).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.sandbox.sink import ReplyScript, SinkServer
from gateway.storage.migrate import upgrade
from tests.e2e.conftest import DkimFiles

pytestmark = pytest.mark.slow

SENDERS = 4
PER_SENDER = 60
KILL_AFTER = 90


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _write_config(tmp_path: Path, smtp_port: int, admin_port: int, sink_port: int,
                  dkim_key: Path) -> Path:
    policy = tmp_path / "policies"
    policy.mkdir()
    (policy / "providers.toml").write_text(
        '[providers.default]\nretry_first = "1s"\nretry_max = "2s"\nidle_close = "1s"\n')
    shutil.copy(Path(__file__).parents[2] / "policies" / "bounces.toml", policy)  # the shipped rules
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[smtp]
listen = ["127.0.0.1:{smtp_port}"]
hostname = "gw.example.com"
[storage]
url = "sqlite:///{tmp_path}/gateway.db"
node_name = "kill-test"
[http]
admin_listen = "127.0.0.1:{admin_port}"
public_listen = "off"
[dns.mx_overrides]
"example.net" = ["127.0.1.6:{sink_port}"]
[policy]
dir = "{policy}"
[tokens]
default_secret_file = "{tmp_path}/token.key"
[[domains]]
name = "example.com"
dkim = [{{ selector = "s1", key_file = "{dkim_key}" }}]
""")
    return config


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=stderr)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gateway did not start listening")


def _sender(port: int, index: int, acknowledged: set[str], lock: threading.Lock) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for n in range(PER_SENDER):
                message_id = f"<kill-{index}-{n}@example.com>"
                data = (f"From: news@example.com\r\nMessage-ID: {message_id}\r\nSubject: {n}\r\n\r\n"
                        f"body {n}\r\n")
                client.sendmail("news@example.com", [f"user{index}.{n}@example.net"], data)
                with lock:
                    acknowledged.add(message_id)
    except (smtplib.SMTPException, OSError):
        return  # the gateway was killed under us: later messages were never acknowledged


async def test_every_acknowledged_message_survives_sigkill(tmp_path: Path, dkim_files: DkimFiles) -> None:
    sink = SinkServer("127.0.1.6", 0, script=ReplyScript().delay("data", 0.05))
    await sink.start()
    smtp_port, admin_port = _free_port("127.0.0.1"), _free_port("127.0.0.1")
    config = _write_config(tmp_path, smtp_port, admin_port, sink.port, dkim_files.rsa)
    log = tmp_path / "gateway.log"
    await upgrade(f"sqlite:///{tmp_path}/gateway.db")
    process = _start(config, log)
    acknowledged: set[str] = set()
    lock = threading.Lock()
    try:
        await asyncio.to_thread(_wait_listening, smtp_port, process, log)
        threads = [threading.Thread(target=_sender, args=(smtp_port, i, acknowledged, lock))
                   for i in range(SENDERS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < KILL_AFTER:
            assert time.monotonic() < deadline, f"only {len(acknowledged)} acknowledged: {log.read_text()[-2000:]}"
            await asyncio.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        killed_with = set(acknowledged)
        in_sink_at_kill = len(sink.messages)
        assert in_sink_at_kill < len(killed_with), "the kill came too late to test anything"

        process = _start(config, log)
        await asyncio.to_thread(_wait_listening, smtp_port, process, log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            delivered = {_message_id(m.data) for m in sink.messages}
            if killed_with <= delivered:
                break
            await asyncio.sleep(0.2)
        missing = killed_with - {_message_id(m.data) for m in sink.messages}
        assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 20)
        except subprocess.TimeoutExpired:
            process.kill()
        await sink.stop()


def _message_id(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""
