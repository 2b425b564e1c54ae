"""`gateway campaign list|show|pause|resume` as an operator runs it: output, exit codes, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.records import NewMessage, new_queue_id
from gateway.storage import queue_store
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade

ROOT = Path(__file__).resolve().parents[2]


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def _setup(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path}/g.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n[policy]\ndir = "{ROOT / "policies"}"\n')
    now = datetime.now(UTC)

    async def fill() -> None:
        await upgrade(url)
        db = Database(url)
        await db.start()
        try:
            message = NewMessage(new_queue_id(now), now, "news@example.com", ("a@one.example", "b@two.example"),
                                 b"Subject: x\r\n\r\nx\r\n", "127.0.0.1", "client", stream="marketing",
                                 list_key="news", campaign="spring")
            await db.write(lambda c: queue_store.insert_messages(c, [message]))
        finally:
            await db.close()

    asyncio.run(fill())
    return config


def test_pause_list_show_resume(tmp_path: Path) -> None:
    config = str(_setup(tmp_path))
    empty = gateway("campaign", "list", "-c", config)
    assert empty.returncode == 0 and empty.stdout.startswith("no paused campaign")

    paused = gateway("campaign", "pause", "spring", "--reason", "checking the list source", "-c", config)
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith("campaign spring paused: 2 queued copies held")
    again = gateway("campaign", "pause", "spring", "-c", config)
    assert again.returncode == 1 and again.stderr == (
        "gateway: campaign spring is already paused (see `gateway campaign show spring`)\n")

    listing = gateway("campaign", "list", "-c", config)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split()[:5] == ["CAMPAIGN", "STATE", "HELD", "SENT", "(24h)"]
    assert row.split()[:4] == ["spring", "paused", "2", "0"]
    assert row.endswith("manual: checking the list source")

    show = gateway("campaign", "show", "spring", "-c", config)
    assert show.returncode == 0, show.stderr
    assert show.stdout.splitlines()[:2] == ["campaign spring: paused, 2 copies held",
                                            "  paused (manual): checking the list source"]
    assert "PROVIDER" in show.stdout

    resumed = gateway("campaign", "resume", "spring", "-c", config)
    assert resumed.returncode == 0 and resumed.stdout.startswith("campaign spring resumed: 2 held copies released")
    not_paused = gateway("campaign", "resume", "spring", "-c", config)
    assert not_paused.returncode == 1 and not_paused.stderr == "gateway: campaign spring is not paused\n"


def test_bad_names_are_one_line_errors(tmp_path: Path) -> None:
    config = str(_setup(tmp_path))
    unknown = gateway("campaign", "show", "autumn", "-c", config)
    assert unknown.returncode == 1
    assert unknown.stderr == "gateway: no campaign autumn: never paused and no answered mail in the last 24h\n"
    empty = gateway("campaign", "pause", " ", "-c", config)
    assert empty.returncode == 2 and empty.stderr.startswith("gateway: a campaign name is required")
    long = gateway("campaign", "pause", "x" * 65, "-c", config)
    assert long.returncode == 2 and long.stderr == "gateway: campaign name longer than 64 characters\n"
    spaced = gateway("campaign", "pause", "spring sale", "-c", config)  # no mail can carry it
    assert spaced.returncode == 2 and spaced.stderr == (
        "gateway: not a campaign name 'spring sale': 1-64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit\n")
    control = gateway("campaign", "resume", "spring\x1b[2J", "-c", config)
    assert control.returncode == 2 and control.stderr.count("\n") == 1 and "\x1b" not in control.stderr
    for result in (unknown, empty, long, spaced, control):
        assert "Traceback" not in result.stderr
