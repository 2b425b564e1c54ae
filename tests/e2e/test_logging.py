"""`gateway serve --log-format json`: one JSON object per line on stdout, no addresses."""

from __future__ import annotations

import asyncio
import json
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ingest.addresses import address_hash
from gateway.sandbox.sink import SinkServer
from gateway.storage.migrate import upgrade
from tests.e2e.conftest import DkimFiles
from tests.e2e.test_kill import _free_port, _wait_listening, _write_config

pytestmark = pytest.mark.slow


async def test_json_log_lines_name_the_delivery_without_the_address(tmp_path: Path,
                                                                     dkim_files: DkimFiles) -> None:
    sink = SinkServer("127.0.1.6", 0)
    await sink.start()
    smtp_port = _free_port("127.0.0.1")
    config = _write_config(tmp_path, smtp_port, _free_port("127.0.0.1"), sink.port, dkim_files.rsa)
    await upgrade(f"sqlite:///{tmp_path}/gateway.db")
    stderr = tmp_path / "stderr.log"
    process = _start_with_json_log(config, stderr)
    try:
        _wait_listening(smtp_port, process, stderr)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("news@example.com", ["erin@example.net"],
                            "From: news@example.com\r\nSubject: hi\r\n\r\nhello\r\n")
        lines = await asyncio.wait_for(_lines_until(process, "delivered"), 20)
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        await sink.stop()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    delivered = next(entry for entry in entries if "delivered" in entry["message"])
    assert f"{address_hash('erin@example.net')[:8]}@example.net" in delivered["message"]
    assert not any("erin@" in line for line in lines)
    assert stderr.read_text() == ""


def _start_with_json_log(config: Path, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as errors:
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "-c", str(config),
                                 "--log-format", "json"], stdout=subprocess.PIPE, stderr=errors)


async def _lines_until(process: subprocess.Popen[bytes], word: str) -> list[str]:
    """Read in a thread: the sink answering the gateway runs on this test's event loop."""
    assert process.stdout is not None
    lines: list[str] = []
    while not any(word in line for line in lines):
        line = (await asyncio.to_thread(process.stdout.readline)).decode()
        if not line:
            raise AssertionError(f"gateway stdout closed before a {word!r} line: {lines}")
        lines.append(line)
    return lines
