"""`gateway queue list|retry|hold|release|purge` with filters, as an operator runs them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.records import NewMessage, new_queue_id
from gateway.storage import campaign_store, queue_store
from gateway.storage.database import Database
from tests.integration.test_cli import ROOT, gateway

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)

pytestmark = pytest.mark.slow


def _message(n: int, campaign: str, *recipients: str) -> NewMessage:
    return NewMessage(queue_id=new_queue_id(T0 + timedelta(milliseconds=n)), received_at=T0,
                      mail_from="news@example.com", recipients=recipients, body=b"Subject: x\r\n\r\nhi\r\n",
                      client_ip="127.0.0.1", helo="client", stream="marketing", list_key="news",
                      campaign=campaign)


async def _fill(url: str) -> tuple[NewMessage, NewMessage, NewMessage]:
    """spring (2 copies, paused), autumn (one copy at one.example), receipt (no campaign)."""
    spring = _message(1, "spring", "a@one.example", "b@two.example")
    autumn, receipt = _message(2, "autumn", "c@one.example"), _message(3, "", "d@two.example")
    db = Database(url)
    await db.start()
    try:
        await db.write(lambda c: campaign_store.pause_campaign(c, "spring", reason="manual", detail="",
                                                               by="cli", now=T0))
        await db.write(lambda c: queue_store.insert_messages(c, [spring, autumn, receipt]))
    finally:
        await db.close()
    return spring, autumn, receipt


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/g.db"\n[policy]\ndir = "{ROOT / "policies"}"\n')
    assert gateway("db", "upgrade", "-c", str(path)).returncode == 0
    return path


def _queue(config: Path, *args: str) -> tuple[int, str, str]:
    result = gateway("queue", *args, "-c", str(config))
    return result.returncode, result.stdout, result.stderr


def _listed(config: Path, *args: str) -> set[tuple[str, str]]:
    """(recipient, state) of each row `queue list` prints."""
    code, out, err = _queue(config, "list", *args)
    assert code == 0, err
    return {(line.split()[-1], line.split()[1]) for line in _rows(out)}


def _rows(out: str) -> list[str]:
    return [line for line in out.splitlines()[1:] if "@" in line and not line.startswith("...")]


def test_queue_actions_with_filters(config: Path, tmp_path: Path) -> None:
    spring, _, _ = asyncio.run(_fill(f"sqlite:///{tmp_path}/g.db"))
    # The default list shows everything still in the queue, held copies included.
    assert _listed(config) == {("a@one.example", "held"), ("b@two.example", "held"),
                               ("c@one.example", "queued"), ("d@two.example", "queued")}
    assert _listed(config, "--state", "held", "--domain", "ONE.example") == {("a@one.example", "held")}
    assert _listed(config, "--campaign", "") == {("d@two.example", "queued")}
    code, out, _ = _queue(config, "list", "--limit", "3")  # a cut list says so
    assert code == 0 and len(_rows(out)) == 3
    assert out.endswith("... more: the first 3 shown (--limit N, or narrow with the filters)\n")

    assert _queue(config, "hold", "--campaign", "autumn")[1] == "1 deliveries held\n"
    assert _queue(config, "hold", "--campaign", "autumn")[1] == "0 deliveries held\n"  # nothing waiting
    assert _queue(config, "release", "--domain", "one.example", "--campaign", "autumn")[1] == \
        "1 deliveries released\n"
    assert _queue(config, "retry", "--id", spring.queue_id.lower())[1] == "0 deliveries made due now\n"
    code, out, _ = _queue(config, "show", spring.queue_id)
    assert code == 0 and "a@one.example: held, 0 attempt(s), provider -, held until released" in out

    assert _queue(config, "purge", "--campaign", "spring", "--state", "held")[1] == "2 deliveries purged\n"
    assert _listed(config) == {("c@one.example", "queued"), ("d@two.example", "queued")}
    assert _queue(config, "purge", "--all", "--state", "queued")[1] == "2 deliveries purged\n"
    assert _listed(config) == set()


@pytest.mark.parametrize(("args", "error"), [
    (("retry", "--state", "held"), "gateway: retry applies to deferred or queued deliveries, not held\n"),
    (("hold", "--all", "--state", "held"), "gateway: hold applies to deferred or queued deliveries, not held\n"),
    (("release", "--state", "queued"), "gateway: release applies to held deliveries, not queued\n"),
    (("list", "--state", "delivered"),
     "gateway: list applies to deferred, held or queued deliveries, not delivered\n"),
    (("list", "--limit", "0"), "gateway: --limit must be at least 1\n"),
    (("purge",), "gateway: queue purge needs --id, --domain, --provider or --campaign, or --all for the "
                 "whole queue\n"),
    (("hold", "--state", "queued"), "gateway: queue hold needs --id, --domain, --provider or --campaign, "
                                    "or --all for the whole queue\n"),
])
def test_bad_filters_are_one_line_errors(config: Path, args: tuple[str, ...], error: str) -> None:
    code, out, err = _queue(config, *args)
    assert (code, out, err) == (2, "", error)
