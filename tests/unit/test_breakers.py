"""Circuit-breaker decisions (pure) and their policy file (policies/reputation.toml)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config.loader import ConfigError
from gateway.config.policy import load_policy
from gateway.feedback.breakers import (
    ALL,
    BUCKET,
    COMPLAINT,
    HARD_BOUNCE,
    Key,
    Limits,
    Tally,
    Thresholds,
    WarningMemory,
    counting_start,
    decide,
    pauses,
    percent,
    with_totals,
)

ROOT = Path(__file__).resolve().parents[2]
DAY = timedelta(hours=24)
NOW = datetime(2026, 11, 25, 12, 0, 30, tzinfo=UTC)
DEFAULTS = Thresholds()


def _decide(tallies: dict[Key, Tally], thresholds: Thresholds = DEFAULTS) -> list[str]:
    return [f"{d.action} {d.key.provider} {d.kind}" for d in decide(tallies, thresholds, window=DAY)]


def mk(provider: str, sent: int, hard: int = 0, complaints: int = 0, campaign: str = "spring",
       stream: str = "marketing") -> dict[Key, Tally]:
    return {Key(stream, campaign, provider): Tally(sent, hard, complaints)}


def test_small_samples_never_trip() -> None:
    assert _decide(mk("gmail", 20, hard=8)) == []  # 40%, but only 20 answers
    assert _decide(mk("gmail", 150, hard=9)) == []  # 6%, but fewer than 10 hard bounces
    assert _decide(mk("gmail", 500, complaints=4)) == []  # 0.8% of a small base: noise
    assert _decide(mk("gmail", 100, hard=10)) == ["pause all hard-bounce", "pause gmail hard-bounce"]


def test_warn_below_pause_and_pause_at_the_limit() -> None:
    assert _decide(mk("gmail", 400, hard=12)) == ["warn all hard-bounce", "warn gmail hard-bounce"]  # 3%
    assert _decide(mk("gmail", 400, hard=20)) == ["pause all hard-bounce", "pause gmail hard-bounce"]  # 5%
    assert _decide(mk("gmail", 5000, complaints=6)) == ["warn all complaint", "warn gmail complaint"]  # 0.12%
    assert _decide(mk("gmail", 2000, complaints=6)) == ["pause all complaint", "pause gmail complaint"]  # 0.3%


def test_the_whole_campaign_trips_when_no_single_provider_does() -> None:
    tallies = {**mk("gmail", 60, hard=6), **mk("yahoo", 60, hard=6), **mk("gmx", 60, hard=6)}
    assert _decide(tallies) == ["pause all hard-bounce"]  # 18 of 180 = 10%
    assert with_totals(tallies)[Key("marketing", "spring", ALL)] == Tally(180, 18)


def test_per_provider_thresholds_replace_the_general_ones() -> None:
    strict = Thresholds(providers={"gmail": {COMPLAINT: Limits(0.0005, 0.001, 1000, 3)}})
    tallies = {**mk("gmail", 3000, complaints=4), **mk("yahoo", 3000, complaints=4)}
    # yahoo's 4 complaints are below min_events; the campaign's 8 of 6000 (0.13%) warn.
    assert _decide(tallies, strict) == ["pause gmail complaint", "warn all complaint"]


def test_the_worst_key_explains_a_pause_and_the_figures_are_readable() -> None:
    tallies = {**mk("gmail", 180, hard=23), **mk("yahoo", 200, hard=11)}
    decisions = decide(tallies, Thresholds(), window=DAY)
    chosen = pauses(decisions)["spring"]
    assert chosen.detail == "hard bounces 23 of 180 sent (12.8%) at gmail over the last 24h, limit 5%"
    warning = decide(mk("yahoo", 2000, complaints=3), Thresholds(), window=timedelta(hours=6))
    assert warning == []  # fewer than min_events complaints
    warning = decide(mk("yahoo", 4000, complaints=6), Thresholds(), window=timedelta(hours=6))
    assert warning[0].detail == ("complaints 6 of 4000 sent (0.15%) across all providers over the last 6h, "
                                 "warning at 0.1%")


def test_only_guarded_streams_with_a_campaign_are_judged_and_transactional_is_never_paused() -> None:
    bad = Tally(100, 50)
    tallies = {Key("transactional", "receipts", "gmail"): bad, Key("marketing", "", "gmail"): bad}
    assert _decide(tallies) == []
    both = decide(tallies, Thresholds(), window=DAY, streams=("marketing", "transactional"))
    assert {d.action for d in both} == {"warn"}
    assert "transactional mail is never paused" in both[0].detail


def test_a_resumed_campaign_counts_from_the_next_whole_bucket() -> None:
    assert counting_start(NOW, DAY, None) == (NOW - DAY).replace(second=0)
    resumed = datetime(2026, 11, 25, 11, 40, 10, tzinfo=UTC)
    assert counting_start(NOW, DAY, resumed) == resumed.replace(second=0) + BUCKET
    on_the_minute = resumed.replace(second=0)
    assert counting_start(NOW, DAY, on_the_minute) == on_the_minute
    assert counting_start(NOW, DAY, NOW - 2 * DAY) == (NOW - DAY).replace(second=0)
    text = decide(mk("gmail", 100, hard=30), Thresholds(), window=DAY, since={"spring": resumed})[0].detail
    assert text.endswith("since the resume at 2026-11-25 11:40 UTC, limit 5%")


def test_warnings_are_given_once_per_key_and_window() -> None:
    memory = WarningMemory()
    warnings = decide(mk("gmail", 400, hard=12), Thresholds(), window=DAY)
    assert len(memory.fresh(warnings, NOW)) == 2
    assert memory.fresh(warnings, NOW + timedelta(hours=23)) == []
    assert len(memory.fresh(warnings, NOW + DAY)) == 2
    memory.forget("spring")
    assert len(memory.fresh(warnings, NOW + DAY)) == 2


def test_a_bought_list_trips_within_the_first_few_hundred_answers() -> None:
    """20% dead addresses, spread at random: the default limits trip at ~100 answers, and a
    healthy list (1% hard) does not trip over a whole 20,000 send."""
    for seed in range(50):
        rng = random.Random(seed)
        hard = sent = 0
        while not pauses(decide(mk("gmail", sent, hard), Thresholds(), window=DAY)):
            sent += 1
            hard += rng.random() < 0.20
        assert sent <= 150, (seed, sent, hard)
    rng = random.Random(7)
    hard = 0
    for sent in range(1, 20_001):
        hard += rng.random() < 0.01
        if sent % 50 == 0:
            assert not pauses(decide(mk("gmail", sent, hard), Thresholds(), window=DAY)), (sent, hard)


def test_percentages_read_naturally() -> None:
    assert [percent(x) for x in (0.128, 0.05, 0.003, 0.0033, 0.001, 0.25)] == \
        ["12.8%", "5%", "0.3%", "0.33%", "0.1%", "25%"]


# -- policies/reputation.toml --------------------------------------------------------------


def _policy_dir(tmp_path: Path, reputation: str) -> Path:
    (tmp_path / "providers.toml").write_text((ROOT / "policies" / "providers.toml").read_text())
    (tmp_path / "reputation.toml").write_text(reputation)
    return tmp_path


def test_the_shipped_file_holds_the_built_in_defaults() -> None:
    reputation = load_policy(ROOT / "policies").reputation
    assert reputation.enabled and reputation.window == 86400 and reputation.streams == ["marketing"]
    assert reputation.thresholds == Thresholds()


def test_overrides_go_key_by_key(tmp_path: Path) -> None:
    policy = load_policy(_policy_dir(tmp_path, """
[reputation]
window = "6h"
[reputation.hard_bounce]
pause = 0.04
[reputation.providers.microsoft.complaint]
pause = "0.2%"
"""))
    thresholds = policy.reputation.thresholds
    assert thresholds.limits(HARD_BOUNCE, "gmail") == Limits(0.02, 0.04, 100, 10)
    assert thresholds.limits(COMPLAINT, "microsoft") == Limits(0.001, 0.002, 1000, 5)
    assert thresholds.limits(COMPLAINT, "gmail") == Thresholds().complaint


@pytest.mark.parametrize(("text", "error"), [
    ('[reputation.hard_bounce]\npause = 5\n', 'reputation.toml:2: reputation.hard_bounce.pause: 5 is not a share: '
                                             'write "5%" or 0.05'),
    ('[reputation.complaint]\nwarn = "0.5%"\n', "reputation.toml:1: reputation.complaint: warn must not be "
                                               "above pause"),
    ('[reputation]\nstreams = ["bulk"]\n', "reputation.toml:2: reputation.streams[0]: Input should be"),
    ('[reputation]\nwindow = "1m"\n', "reputation.toml:2: reputation.window: Input should be greater than or "
                                     "equal to 300"),
    ('[reputation]\nenable = true\n', "reputation.toml:2: reputation.enable: unknown key"),
    ('[reputation.providers.gmial.complaint]\npause = "0.2%"\n',
     "reputation.toml:1: reputation.providers.gmial.complaint: 'gmial' names no provider profile"),
    ('[reputation.hard_bounce]\nmin_sent = 0\n', "reputation.toml:2: reputation.hard_bounce.min_sent: Input "
                                                "should be greater than or equal to 1"),
])
def test_bad_files_are_refused_with_file_line_and_key(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_policy(_policy_dir(tmp_path, text))
    assert any(error in problem and problem.startswith(str(tmp_path)) for problem in caught.value.problems), \
        caught.value.problems
