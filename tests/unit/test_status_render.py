"""`gateway status` rendering (pure: the status JSON in, table text out) and the pure parts
of gathering it (queue summary, warm-up rows)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli.main import main
from gateway.cli.status_cmd import _reachable, fetch_live, render_text
from gateway.config.policy import Policy
from gateway.config.schema import Settings
from gateway.config.units import HostPort
from gateway.operations.status import summarize_queue, warmup_rows
from gateway.shaping.router import PoolSpec, SourceIp
from gateway.storage.status_store import QueueGroup, QueueScan

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def _status(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "generated_at": NOW.isoformat(), "node": "mx1", "live": True,
        "queue": {"total": 7, "by_state": {"queued": 4, "deferred": 2, "held": 1},
                  "oldest_due": (NOW - timedelta(minutes=12)).isoformat(),
                  "groups": [
                      {"state": "queued", "provider": "", "count": 3, "oldest_due": NOW.isoformat()},
                      {"state": "queued", "provider": "gmail", "count": 1,
                       "oldest_due": (NOW + timedelta(seconds=40)).isoformat()},
                      {"state": "deferred", "provider": "gmail", "count": 2,
                       "oldest_due": (NOW - timedelta(minutes=12)).isoformat()},
                      {"state": "held", "provider": "yahoo", "count": 1, "oldest_due": NOW.isoformat()}]},
        "providers": [
            {"provider": "default", "connections": 0, "connections_by_ip": {}, "paused_until": None,
             "slowed": {}},
            {"provider": "gmail", "connections": 3, "connections_by_ip": {"127.0.0.10": 2, "127.0.0.11": 1},
             "paused_until": (NOW + timedelta(minutes=1)).isoformat(),
             "slowed": {"127.0.0.11": "10/m until 09:40:00"}}],
        "suspensions": [{"provider": "gmail", "source_ip": "127.0.0.10",
                         "until": (NOW + timedelta(hours=1)).isoformat(),
                         "reason": "rule 4.7.28: 421 4.7.28 unusual rate"}],
        "warmup": [{"source_ip": "127.0.0.13", "provider": "gmail", "day": 3, "cap": 150, "sent_today": 42,
                    "held_days": 1},
                   {"source_ip": "127.0.0.13", "provider": "yahoo", "day": 3, "cap": None, "sent_today": 5,
                    "held_days": 0}],
        "paused_campaigns": [{"campaign": "spring-sale", "reason": "hard-bounce", "detail": "7.2% of 500 at gmail",
                              "changed_by": "breaker", "changed_at": (NOW - timedelta(hours=2)).isoformat(),
                              "held": 1}],
        "webhook_backlog": 12, "feedback_unapplied": 0,
    }
    data.update(changes)
    return data


def _row(text: str, *cells: str) -> list[str]:
    """The one table row whose cells hold ``cells`` in order (each within one cell)."""
    found = []
    for line in text.splitlines():
        row = [cell.strip() for cell in line.split("│")[1:-1]]
        rest = iter(row)
        if row and all(any(wanted in cell for cell in rest) for wanted in cells):
            found.append(row)
    assert len(found) == 1, f"{cells} in {len(found)} rows of:\n{text}"
    return found[0]


def test_every_part_is_a_table_with_readable_rows() -> None:
    text = render_text(_status(), width=160)
    assert "gateway status at 2026-03-02 09:30:00 UTC, node mx1" in text
    assert "queue: 7 deliveries (2 deferred, 1 held, 4 queued)" in text
    _row(text, "(not routed yet)", "queued", "3", "2026-03-02 09:30:00 (now)")
    _row(text, "gmail", "deferred", "2", "2026-03-02 09:18:00 (12m ago)")
    _row(text, "gmail", "queued", "1", "(in 40s)")
    _row(text, "yahoo", "held", "1")
    _row(text, "gmail", "3", "127.0.0.10: 2, 127.0.0.11: 1", "2026-03-02 09:31:00 (in 1m)", "127.0.0.11: 10/m")
    _row(text, "127.0.0.10", "gmail", "2026-03-02 10:30:00 (in 1h)", "rule 4.7.28: 421 4.7.28 unusual rate")
    _row(text, "127.0.0.13", "gmail", "3", "150", "42", "1")
    _row(text, "127.0.0.13", "yahoo", "3", "unlimited", "5", "0")
    _row(text, "spring-sale", "hard-bounce", "breaker", "(2h ago)", "1", "7.2% of 500 at gmail")
    assert "webhook backlog: 12 event(s) waiting; unapplied feedback: 0 record(s)" in text
    assert "\x1b[" not in text  # no colour codes in plain text
    assert "│ default" not in text  # an idle provider profile is left out


def test_idle_providers_say_so_in_one_line_and_a_long_reason_stays_readable() -> None:
    idle = [{"provider": "gmail", "connections": 0, "connections_by_ip": {}, "paused_until": None, "slowed": {}}]
    long_reason = "hard bounces 21 of 105 sent (20%) across all providers over the last 24h, limit 5%"
    campaign = dict(_status()["paused_campaigns"][0], detail=long_reason)
    text = render_text(_status(providers=idle, paused_campaigns=[campaign]), width=140)
    assert "providers (this node): no open connections, pauses or slow-downs" in text
    assert "across all" in text and "limit 5%" in text  # the WHY column keeps a readable width


def test_database_only_status_leaves_out_the_live_parts() -> None:
    text = render_text(_status(node=None, live=False, providers=None, suspensions=None))
    assert "database only (gateway not reached)" in text
    assert "providers" not in text and "suspensions" not in text
    assert "warm-up" in text and "paused campaigns" in text


def test_empty_parts_say_so_in_one_line() -> None:
    empty = {"total": 0, "by_state": {}, "oldest_due": None, "groups": []}
    text = render_text(_status(queue=empty, suspensions=[], warmup=[], paused_campaigns=[]))
    for line in ("queue: empty", "suspensions: none", "warm-up: no IP is warming up", "paused campaigns: none"):
        assert line in text.splitlines()


def test_a_suspension_from_another_node_has_no_reason_here() -> None:
    other = [{"provider": "gmail", "source_ip": "", "until": NOW.isoformat(), "reason": ""}]
    text = render_text(_status(suspensions=other), width=160)
    _row(text, "OS-chosen", "gmail", "(suspended by another node)")


def test_queue_summary_totals_states_and_finds_the_oldest() -> None:
    groups = [QueueGroup("deferred", "gmail", 2, NOW - timedelta(hours=1)), QueueGroup("queued", "", 5, NOW),
              QueueGroup("queued", "gmail", 1, NOW + timedelta(minutes=5))]
    summary = summarize_queue(QueueScan(groups, frozenset()))
    assert (summary.total, summary.by_state, summary.oldest_due, summary.capped) == (
        8, {"deferred": 2, "queued": 6}, NOW - timedelta(hours=1), [])
    assert summarize_queue(QueueScan([], frozenset())).oldest_due is None


def test_a_held_copy_is_not_the_oldest_due() -> None:
    """Held copies keep the due time they had when held (days ago for a paused campaign):
    counting it would show a long-overdue queue where nothing waits."""
    groups = [QueueGroup("held", "gmail", 40, NOW - timedelta(days=3)), QueueGroup("queued", "", 1, NOW)]
    assert summarize_queue(QueueScan(groups, frozenset())).oldest_due == NOW
    only_held = summarize_queue(QueueScan(groups[:1], frozenset()))
    assert (only_held.total, only_held.oldest_due) == (40, None)


def test_counts_stopped_at_the_scan_limit_show_as_lower_bounds() -> None:
    queue = {"total": 100_003, "by_state": {"queued": 100_000, "deferred": 3}, "oldest_due": NOW.isoformat(),
             "capped": ["queued"], "scan_limit": 100_000,
             "groups": [{"state": "queued", "provider": "gmail", "count": 100_000, "oldest_due": NOW.isoformat()},
                        {"state": "deferred", "provider": "gmail", "count": 3, "oldest_due": NOW.isoformat()}]}
    text = render_text(_status(queue=queue), width=160)
    assert "queue: 100003+ deliveries (3 deferred, 100000+ queued)" in text
    _row(text, "gmail", "queued", "100000+")
    _row(text, "gmail", "deferred", "3")
    assert "queued: the 100000 soonest due counted; gateway_queue_deliveries has the totals" in text


def test_warmup_rows_cover_warming_ips_and_scheduled_providers() -> None:
    policy = Policy.model_validate({
        "providers": {"default": {}, "gmail": {"match_mx": ["google.com"]}, "yahoo": {"match_mx": ["yahoodns.net"]}},
        "warmup": {"schedules": {"gmail": {"1": 50, "3": 200, "5": "unlimited"}}}})
    today = date(2026, 3, 5)
    pools = {"default": PoolSpec("default", (SourceIp("127.0.0.10", "a"),
                                             SourceIp("127.0.0.11", "b", warmup_start=date(2026, 3, 1))))}
    rows = warmup_rows(pools, policy, today, sent=lambda ip, p: 17, held=lambda ip, p: 2)
    assert [(r.source_ip, r.provider, r.day, r.cap, r.sent_today, r.held_days) for r in rows] == [
        ("127.0.0.11", "gmail", 3, 200, 17, 2)]  # day 5 less two held days; no schedule for others


def test_a_wildcard_admin_listener_is_reached_on_loopback() -> None:
    assert _reachable(HostPort("0.0.0.0", 8025)) == "127.0.0.1:8025"
    assert _reachable(HostPort("::", 8025)) == "[::1]:8025"
    assert _reachable(HostPort("127.0.0.2", 9)) == "127.0.0.2:9"


# -- asking the running gateway: what a refusal or a broken answer falls back to ---------------

def _settings(tmp_path: Path) -> Settings:
    token = tmp_path / "api.token"
    token.write_text("status-" + "d" * 40)
    token.chmod(0o600)
    return Settings.model_validate({"http": {"admin_listen": "0.0.0.0:8025", "api_token_file": str(token)}})


def _answering(status: int, body: bytes, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def reply(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, content=body, headers={"Content-Type": "application/json"})
    return httpx.MockTransport(reply)


def test_the_live_status_is_asked_on_loopback_with_the_token(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    status, missing = fetch_live(_settings(tmp_path), _answering(200, json.dumps(_status()).encode(), seen))
    assert (missing, status is not None and status.node) == ("", "mx1")
    assert str(seen[0].url) == "http://127.0.0.1:8025/api/status"
    assert seen[0].headers["Authorization"] == "Bearer status-" + "d" * 40


def test_a_refused_token_falls_back_and_says_why(tmp_path: Path) -> None:
    refused = json.dumps({"error": "invalid bearer token"}).encode()
    status, missing = fetch_live(_settings(tmp_path), _answering(401, refused))
    assert status is None
    assert missing == ("http://127.0.0.1:8025/api/status refused the token of [http] api_token_file "
                       "(401: invalid bearer token)")


def test_a_server_error_or_a_foreign_answer_falls_back(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert fetch_live(settings, _answering(500, b"Internal Server Error")) == (
        None, "http://127.0.0.1:8025/api/status answered 500: Internal Server Error")
    assert fetch_live(settings, _answering(503, b'{"error": "storage unavailable, try again"}'))[1].endswith(
        "answered 503: storage unavailable, try again")
    for foreign in (b'{"status": "ok"}', b"<html>not json</html>", b"[]"):
        assert fetch_live(settings, _answering(200, foreign)) == (
            None, "http://127.0.0.1:8025/api/status answered something that is not a gateway status")


def test_no_token_or_listener_is_said_without_asking(tmp_path: Path) -> None:
    assert fetch_live(Settings.model_validate({})) == (None, "[http] api_token_file is not set")
    missing = Settings.model_validate({"http": {"admin_listen": "127.0.0.1:8025",
                                                "api_token_file": str(tmp_path / "nothing")}})
    status, why = fetch_live(missing)
    assert status is None and why.startswith("cannot use the API token: ") and "file not found" in why


def test_neither_source_is_one_line_saying_why_for_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/empty.db"\n')  # no schema: never upgraded
    assert main(["status", "-c", str(config)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and "Traceback" not in out.err and len(out.err.splitlines()) == 1
    assert "no such table" in out.err and "live status unavailable too: [http] api_token_file is not set" in out.err
    assert "`gateway db upgrade -c FILE`" in out.err
