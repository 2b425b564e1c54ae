"""`gateway lists|suppress|contacts` as an operator runs them, on a SQLite database."""

from __future__ import annotations

import csv
import json
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.ingest.addresses import address_hash

ROOT = Path(__file__).resolve().parents[2]


class Gateway:
    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        self.db_path = tmp_path / "g.db"
        self.config = tmp_path / "c.toml"
        url = url or f"sqlite:///{self.db_path}"
        self.config.write_text(f'[storage]\nurl = "{url}"\n[policy]\ndir = "{ROOT / "policies"}"\n')
        upgrade = self("db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "gateway", *args, "-c", str(self.config)],
                                capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            with conn:
                return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    return Gateway(tmp_path)


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows(rows)
    return path


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as data:
        return list(csv.reader(data))


# -- lists -----------------------------------------------------------------------------------

def test_lists_add_and_list(gw: Gateway) -> None:
    assert gw.ok("lists", "list").startswith("no lists yet")
    added = gw.ok("lists", "add", "news", "--name", "News", "--name", "de=Neuigkeiten", "--name", "zh=新闻",
                  "--description", "Monthly news", "--description", "de=Monatliche Neuigkeiten",
                  "--double-opt-in", "--cap", "weekly=10")
    assert added == "list news added (marketing, double opt-in): News, de=Neuigkeiten, zh=新闻\n"
    gw.ok("lists", "add", "receipts", "--name", "Receipts", "--kind", "transactional")
    assert gw.ok("lists", "list").splitlines() == [
        "KEY       KIND           DOI  NAMES",
        "news      marketing      yes  News, de=Neuigkeiten, zh=新闻",
        "receipts  transactional  no   Receipts",
    ]
    [(kind, doi, names, descriptions, caps)] = gw.query(
        "SELECT kind, double_opt_in, names, descriptions, cap_days FROM lists WHERE key = 'news'")
    assert (kind, doi, json.loads(str(caps))) == ("marketing", 1, {"weekly": 10.0})
    assert json.loads(str(names)) == {"": "News", "de": "Neuigkeiten", "zh": "新闻"}
    assert json.loads(str(descriptions)) == {"": "Monthly news", "de": "Monatliche Neuigkeiten"}

    again = gw("lists", "add", "news", "--name", "Other")
    assert (again.returncode, again.stderr) == (1, "gateway: list news exists\n")
    for args, message in ((["bad key", "--name", "x"], "bad list key 'bad key'"),
                          (["tips", "--name", "x", "--cap", "hourly=1"], "bad cap hourly=1"),
                          (["tips", "--name", "x", "--cap", "weekly=soon"], "bad cap weekly=soon"),
                          (["tips", "--name", "A", "--name", "B"], "given twice")):
        bad = gw("lists", "add", *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert gw("lists", "add", "--help").returncode == 0


# -- suppressions ------------------------------------------------------------------------------

def test_suppress_add_list_remove(gw: Gateway) -> None:
    assert gw.ok("suppress", "add", "Dead@Example.COM", "--reason", "hard-bounce") == (
        "suppressed Dead@example.com (global, hard-bounce)\n")
    out = gw.ok("suppress", "add", "ann@example.com", "--scope", "list", "--key", "news", "--expires", "30d",
                "--note", "asked by phone")
    assert out.startswith("suppressed ann@example.com (list news, manual, until ")
    digest = address_hash("hidden@example.org")
    gw.ok("suppress", "add", digest, "--reason", "complaint", "--source", "fbl")

    for args, message in ((["x@example.com", "--scope", "list"], "--scope list needs --key"),
                          (["x@example.com", "--key", "news"], "a global suppression takes no key"),
                          (["not-an-address"], "bad address 'not-an-address'"),
                          (["x@example.com", "--expires", "soon"], "bad duration 'soon'"),
                          (["x@example.com", "--scope", "campaign", "--key", "a b"], "bad key 'a b'")):
        bad = gw("suppress", "add", *args)
        assert bad.returncode == 2 and message in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert gw("suppress", "add", "x@example.com", "--reason", "bored").returncode == 2

    listing = gw.ok("suppress", "list").splitlines()
    assert listing[0].split() == ["ADDRESS", "SCOPE", "REASON", "SOURCE", "CREATED", "(UTC)", "EXPIRES", "NOTE"]
    assert [line.split()[0] for line in listing[1:]] == ["Dead@example.com", "ann@example.com", digest]
    assert "asked by phone" in listing[2] and "list news" in listing[2]
    assert gw.ok("suppress", "list", "--limit", "1").splitlines()[-1].startswith("... more")
    assert len(gw.ok("suppress", "list", "dead@example.com").splitlines()) == 2  # case-insensitive match

    removed = gw("suppress", "remove", "ann@example.com", "--scope", "global")
    assert (removed.returncode, removed.stdout) == (1, "no suppression of ann@example.com matched\n")
    assert gw.ok("suppress", "remove", "ann@example.com", "--scope", "list", "--key", "news") == (
        "removed 1 suppression of ann@example.com\n")
    assert gw.ok("suppress", "remove", digest, "--reason", "complaint") == f"removed 1 suppression of {digest}\n"
    assert gw.query("SELECT address, scope, reason, source FROM suppressions") == [
        ("Dead@example.com", "global", "hard-bounce", "cli")]
    assert gw("suppress", "list", "ann@example.com").returncode == 1


def test_suppress_import_and_export_round_trip(gw: Gateway, tmp_path: Path) -> None:
    hashed = address_hash("secret@example.net")
    source = write_csv(tmp_path / "supp.csv", [
        ["Email", "address_hash", "scope", "key", "reason", "expires", "note"],
        ["bounce@example.com", "", "", "", "hard-bounce", "", ""],
        ["", hashed.upper(), "", "", "complaint", "", "from the FBL"],
        ["list@example.com", "", "list", "news", "unsubscribe", "2030-01-01T00:00:00Z", ""],
        ["camp@example.com", "", "campaign", "spring-24", "", "7d", ""],
        ["bad@example.com", "", "", "", "bored", "", ""],
        ["", "1234", "", "", "", "", ""],
        ["also bad", "", "", "", "", "", ""],
    ])
    out = gw.ok("suppress", "import", str(source))
    assert out == f"imported 4 suppressions, rejected 3 rows (see {tmp_path / 'supp.rejects.csv'})\n"
    assert [row[-2:] for row in read_csv(tmp_path / "supp.rejects.csv")] == [
        ["line", "reason"],
        ["6", "bad reason 'bored': expected one of hard-bounce, complaint, unsubscribe, manual, import, "
              "role-account, spam-trap, soft-bounce"],
        ["7", "bad address_hash: expected 64 hex digits (SHA-256 of the lower-cased address)"],
        ["8", "bad address syntax: 'also bad'"],
    ]
    rows = gw.query("SELECT address, address_hash, scope, scope_key, reason, source, expires_at IS NOT NULL, note "
                    "FROM suppressions ORDER BY id")
    assert rows == [
        ("bounce@example.com", address_hash("bounce@example.com"), "global", "", "hard-bounce", "import", 0, None),
        (None, hashed, "global", "", "complaint", "import", 0, "from the FBL"),
        ("list@example.com", address_hash("list@example.com"), "list", "news", "unsubscribe", "import", 1, None),
        ("camp@example.com", address_hash("camp@example.com"), "campaign", "spring-24", "import", "import", 1, None),
    ]
    exported = tmp_path / "export.csv"
    assert gw.ok("suppress", "export", "--out", str(exported)) == f"exported 4 suppressions to {exported}\n"
    table = read_csv(exported)
    assert table[0] == ["address", "address_hash", "scope", "key", "reason", "expires", "note", "source", "created"]
    assert table[2][:7] == ["", hashed, "global", "", "complaint", "", "from the FBL"]
    assert table[3][5] == "2030-01-01T00:00:00+00:00"
    assert gw.ok("suppress", "export") == exported.read_text()  # standard output, same content

    before = gw.query("SELECT address, address_hash, scope, scope_key, reason, expires_at, note FROM suppressions "
                      "ORDER BY id")
    gw.query("DELETE FROM suppressions")
    assert gw.ok("suppress", "import", str(exported), "--source", "restore").startswith("imported 4 suppressions, "
                                                                                          "rejected 0 rows")
    assert gw.query("SELECT address, address_hash, scope, scope_key, reason, expires_at, note FROM suppressions "
                    "ORDER BY id") == before
    assert {row[0] for row in gw.query("SELECT source FROM suppressions")} == {"restore"}
    gw.ok("suppress", "import", str(exported))  # again: refreshed, not duplicated
    assert gw.query("SELECT count(*) FROM suppressions") == [(4,)]


# -- contacts --------------------------------------------------------------------------------

MIXED = [
    ["Email", "Name", "proof", "ip", "signed_up", "frequency", "lang"],        # line 1
    ["ann@example.com", "Ann", "tok-ann", "192.0.2.1", "2024-05-01T10:00:00Z", "weekly", "de"],
    ["not-an-address", "Bob", "tok-bob", "", "", "", ""],
    ["Ann@Example.com", "Ann again", "tok-ann2", "", "", "", ""],
    ["cid@example.com", "Cid", "tok-cid", "", "", "hourly", ""],              # line 5
    ["dan@example.com", "Dan", "", "", "", "", ""],
    ["eve@gmial.com", "Eve", "tok-eve", "", "2024-05-02", "monthly", "en"],
    ["dead@example.com", "Dead", "tok-dead", "", "", "", ""],
    ["fay@example.com", "Fay", "tok-fay", "", "05/01/2024", "", ""],
    [],                                                                        # line 10: blank
    ["gus@Example.COM", "Gus\nwith a note", "tok-gus", "198.51.100.7", "", "daily", "pt-BR"],  # lines 11-12
    ["hal@example.com", "Hal", "tok-hal", "", "", "", ""],                    # line 13
]
IMPORT_OPTIONS = ["--list", "news", "--proof-column", "proof", "--ip-column", "IP", "--time-column", "signed_up",
                  "--frequency-column", "frequency", "--locale-column", "lang"]


def test_contacts_import_checks_each_row_and_records_the_evidence(gw: Gateway, tmp_path: Path) -> None:
    gw.ok("lists", "add", "news", "--name", "News", "--double-opt-in")
    gw.ok("lists", "add", "offers", "--name", "Offers")
    gw.ok("suppress", "add", "dead@example.com", "--reason", "hard-bounce")
    earlier = write_csv(tmp_path / "earlier.csv", [["address"], ["gus@example.com"]])
    assert gw.ok("contacts", "import", str(earlier), "--list", "offers") == (
        f"imported 1 contacts (1 new), rejected 0 rows (see {tmp_path / 'earlier.rejects.csv'}), 0 warnings, "
        f"0 already suppressed, 0 skipped (withdrawn later, or erased)\n")

    source = write_csv(tmp_path / "people.csv", MIXED)
    result = gw("contacts", "import", str(source), *IMPORT_OPTIONS)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"imported 5 contacts (4 new), rejected 5 rows (see {tmp_path / 'people.rejects.csv'}), "
                             f"1 warnings, 1 already suppressed, 0 skipped (withdrawn later, or erased)\n")
    assert read_csv(tmp_path / "people.rejects.csv") == [
        [*MIXED[0], "line", "reason"],
        [*MIXED[2], "3", "bad address syntax: 'not-an-address'"],
        [*MIXED[3], "4", "duplicate: an earlier row has this address"],
        [*MIXED[4], "5", "bad frequency 'hourly': expected one of daily, weekly, biweekly, monthly, quarterly"],
        [*MIXED[5], "6", "the list requires double opt-in and the row has no proof"],
        [*MIXED[8], "9", "bad time '05/01/2024': expected ISO 8601, e.g. 2024-05-01T09:30:00Z"],
    ]
    assert read_csv(tmp_path / "people.warnings.csv") == [
        ["line", "address", "warning"],
        ["7", "eve@gmial.com", "domain gmial.com looks like a typo of gmail.com (did you mean eve@gmail.com?)"],
    ]
    assert not (tmp_path / "people.progress").exists()

    contacts = gw.query("SELECT address, address_hash, locale FROM contacts ORDER BY id")
    assert contacts == [("gus@example.com", address_hash("gus@example.com"), None),  # existing: kept as it was
                        ("ann@example.com", address_hash("ann@example.com"), "de"),
                        ("eve@gmial.com", address_hash("eve@gmial.com"), "en"),  # never rewritten
                        ("dead@example.com", address_hash("dead@example.com"), None),
                        ("hal@example.com", address_hash("hal@example.com"), None)]
    assert gw.query("SELECT c.address, s.status, s.frequency FROM consents s JOIN contacts c ON c.id = s.contact_id "
                    "WHERE s.list_key = 'news' ORDER BY c.id") == [
        ("gus@example.com", "confirmed", "daily"), ("ann@example.com", "confirmed", "weekly"),
        ("eve@gmial.com", "confirmed", "monthly"), ("dead@example.com", "confirmed", None),
        ("hal@example.com", "confirmed", None)]
    history = gw.query("SELECT address_hash, list_key, status, source, ip, proof, frequency, at FROM consent_history "
                       "ORDER BY id")
    assert [row[:7] for row in history] == [
        (address_hash("gus@example.com"), "offers", "confirmed", "import", None, "import of earlier.csv line 2", None),
        (address_hash("ann@example.com"), "news", "confirmed", "import", "192.0.2.1", "tok-ann", "weekly"),
        (address_hash("eve@gmial.com"), "news", "confirmed", "import", None, "tok-eve", "monthly"),
        (address_hash("dead@example.com"), "news", "confirmed", "import", None, "tok-dead", None),
        (address_hash("gus@example.com"), "news", "confirmed", "import", "198.51.100.7", "tok-gus", "daily"),
        (address_hash("hal@example.com"), "news", "confirmed", "import", None, "tok-hal", None),
    ]
    assert str(history[1][7]).startswith("2024-05-01 10:00:00") and str(history[2][7]).startswith("2024-05-02 00:00")

    exported = gw.ok("contacts", "export", "--list", "news").splitlines()
    assert exported[0] == "address,locale,list,status,frequency,source,time,proof"
    assert "ann@example.com,de,news,confirmed,weekly,import,2024-05-01T10:00:00+00:00,tok-ann" in exported
    assert [line.split(",")[0] for line in exported[1:]] == [
        "gus@example.com", "ann@example.com", "eve@gmial.com", "dead@example.com", "hal@example.com"]
    assert gw.ok("contacts", "export", "--out", str(tmp_path / "all.csv")) == (
        f"exported 6 consents to {tmp_path / 'all.csv'}\n")
    everything = read_csv(tmp_path / "all.csv")
    assert [row[:3] for row in everything[1:3]] == [["gus@example.com", "", "news"], ["gus@example.com", "", "offers"]]
    assert everything[2][3:] == ["confirmed", "", "import", everything[2][6], "import of earlier.csv line 2"]

    # Again: no new contact, the same state, and the history records the second import too.
    again = gw.ok("contacts", "import", str(source), *IMPORT_OPTIONS)
    assert again.startswith("imported 5 contacts (0 new), rejected 5 rows")
    assert gw.query("SELECT count(*) FROM contacts") == [(5,)]
    assert gw.query("SELECT count(*) FROM consents") == [(6,)]
    assert gw.query("SELECT count(*) FROM consent_history") == [(11,)]


def test_contacts_import_refuses_bad_files_before_writing_anything(gw: Gateway, tmp_path: Path) -> None:
    gw.ok("lists", "add", "news", "--name", "News", "--double-opt-in")
    gw.ok("lists", "add", "offers", "--name", "Offers")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("email,name\nann@example.com,Ann\nrene@example.com,René\n".encode("latin-1"))
    result = gw("contacts", "import", str(latin1), "--list", "offers")
    assert (result.returncode, result.stderr) == (2, f"gateway: {latin1} is not UTF-8 (line 3): save it as UTF-8\n")

    no_address = write_csv(tmp_path / "cols.csv", [["Name", "E-Mail"], ["Ann", "ann@example.com"]])
    result = gw("contacts", "import", str(no_address), "--list", "offers")
    assert (result.returncode, result.stderr) == (
        2, f"gateway: {no_address}: no column 'email' or 'address'; columns found: 'Name', 'E-Mail'\n")
    no_proof = write_csv(tmp_path / "proof.csv", [["email", "token"], ["ann@example.com", "t"]])
    result = gw("contacts", "import", str(no_proof), "--list", "news", "--proof-column", "proof")
    assert result.returncode == 2 and "no column 'proof' (named by --proof-column)" in result.stderr
    result = gw("contacts", "import", str(no_proof), "--list", "news")
    assert result.returncode == 2 and "list news requires double opt-in" in result.stderr
    result = gw("contacts", "import", str(no_proof), "--list", "nope")
    assert result.returncode == 2 and "no list 'nope'" in result.stderr
    result = gw("contacts", "import", str(tmp_path / "missing.csv"), "--list", "offers")
    assert (result.returncode, result.stderr) == (2, f"gateway: {tmp_path / 'missing.csv'}: no such file\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert gw("contacts", "import", str(empty), "--list", "offers").returncode == 2
    assert gw("contacts", "import", str(no_proof), "--list", "offers", "--chunk", "0").returncode == 2

    assert gw.query("SELECT count(*) FROM contacts") == [(0,)]
    assert sorted(path.name for path in tmp_path.iterdir() if "rejects" in path.name or "warnings" in path.name
                  or "progress" in path.name) == []


def test_contacts_import_with_a_bom_and_a_custom_reject_file(gw: Gateway, tmp_path: Path) -> None:
    gw.ok("lists", "add", "offers", "--name", "Offers")
    source = tmp_path / "bom.csv"
    source.write_bytes(b"\xef\xbb\xbfADDRESS\r\n" + "zoë@exämple.de\r\nbad\r\n".encode())
    rejects = tmp_path / "out" / "r.csv"
    out = gw.ok("contacts", "import", str(source), "--list", "offers", "--reject-file", str(rejects))
    assert out.startswith(f"imported 1 contacts (1 new), rejected 1 rows (see {rejects})")
    assert gw.query("SELECT address FROM contacts") == [("zoë@xn--exmple-cua.de",)]
    assert read_csv(rejects) == [["ADDRESS", "line", "reason"], ["bad", "3", "bad address syntax: 'bad'"]]


def numbered(path: Path, count: int) -> Path:
    return write_csv(path, [["email"], *([f"user{i}@example.com"] for i in range(count))])


def test_resume_continues_after_the_committed_line(gw: Gateway, tmp_path: Path) -> None:
    gw.ok("lists", "add", "offers", "--name", "Offers")
    source = numbered(tmp_path / "many.csv", 50)  # user0 on line 2 ... user49 on line 51
    progress = tmp_path / "many.progress"
    stat = source.stat()
    progress.write_text(json.dumps({"line": 20, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))

    refused = gw("contacts", "import", str(source), "--list", "offers")
    assert refused.returncode == 2 and "stopped after line 20" in refused.stderr and "--resume" in refused.stderr
    out = gw.ok("contacts", "import", str(source), "--list", "offers", "--resume", "--chunk", "7")
    assert out.startswith("imported 31 contacts (31 new), rejected 0 rows")
    assert [row[0] for row in gw.query("SELECT address FROM contacts ORDER BY id")] == [
        f"user{i}@example.com" for i in range(19, 50)]
    assert not progress.exists()

    progress.write_text(json.dumps({"line": 20, "size": stat.st_size + 1, "mtime_ns": stat.st_mtime_ns}))
    changed = gw("contacts", "import", str(source), "--list", "offers", "--resume")
    assert changed.returncode == 2 and "changed since the import stopped" in changed.stderr


def test_a_crash_loses_at_most_the_chunk_in_flight(gw: Gateway, tmp_path: Path) -> None:
    gw.ok("lists", "add", "offers", "--name", "Offers")
    source = numbered(tmp_path / "crash.csv", 50)
    gw.query("CREATE TRIGGER boom BEFORE INSERT ON contacts WHEN NEW.address = 'user25@example.com' "
             "BEGIN SELECT RAISE(ABORT, 'simulated crash'); END")
    crashed = gw("contacts", "import", str(source), "--list", "offers", "--chunk", "10")
    assert crashed.returncode == 1 and "simulated crash" in crashed.stderr
    assert crashed.stderr.rstrip().endswith("rows up to line 21 are committed: once the cause is fixed, run the "
                                            "same command with --resume")
    assert gw.query("SELECT count(*) FROM contacts") == [(20,)]  # two chunks of ten committed, the third not
    saved = json.loads((tmp_path / "crash.progress").read_text())
    assert (saved["line"], saved["imported"], saved["new"]) == (21, 20, 20)

    gw.query("DROP TRIGGER boom")
    out = gw.ok("contacts", "import", str(source), "--list", "offers", "--chunk", "10", "--resume")
    assert out.startswith("imported 50 contacts (50 new), rejected 0 rows")
    assert gw.query("SELECT count(*), count(DISTINCT address_hash) FROM contacts") == [(50, 50)]
    assert gw.query("SELECT count(*) FROM consent_history") == [(50,)]
    assert not (tmp_path / "crash.progress").exists()


@pytest.mark.slow
def test_a_200k_row_import_streams(gw: Gateway, tmp_path: Path) -> None:
    gw.ok("lists", "add", "big", "--name", "Big")
    source = tmp_path / "big.csv"
    with source.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "frequency"])
        writer.writerows([f"user{i}@example{i % 97}.com", "weekly"] for i in range(200_000))
        writer.writerow(["user7@example7.com", "weekly"])  # a duplicate at the very end
    started = time.monotonic()
    result = gw("contacts", "import", str(source), "--list", "big", "--frequency-column", "frequency", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("imported 200000 contacts (200000 new), rejected 1 rows")
    assert "imported 200000 / rejected 0 rows" in result.stderr  # progress lines (not a TTY: every 10 chunks)
    assert gw.query("SELECT count(*) FROM consents WHERE list_key = 'big' AND frequency = 'weekly'") == [(200_000,)]
    assert elapsed < 60
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    assert peak_kib < 300 * 1024


def test_import_export_and_suppressions_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    gw = Gateway(tmp_path, postgres_url)
    gw.ok("lists", "add", "news", "--name", "News", "--double-opt-in")
    rows = [["email", "proof", "frequency"]] + [
        [f"user{n}@example.net", f"form v2 #{n}", "weekly"] for n in range(2500)]
    source = write_csv(tmp_path / "people.csv", rows)
    assert gw.ok("contacts", "import", str(source), "--list", "news", "--proof-column", "proof",
                 "--frequency-column", "frequency", "--chunk", "700").startswith(
        "imported 2500 contacts (2500 new), rejected 0 rows")
    again = gw.ok("contacts", "import", str(source), "--list", "news", "--proof-column", "proof")
    assert again.startswith("imported 2500 contacts (0 new)")  # no second contact
    exported = gw.ok("contacts", "export", "--list", "news").splitlines()
    assert len(exported) == 2501 and exported[1].endswith(",form v2 #0")
    gw.ok("suppress", "add", "user7@example.net", "--reason", "hard-bounce")
    gw.ok("suppress", "add", "user7@example.net", "--reason", "unsubscribe", "--scope", "list", "--key", "news")
    assert "hard-bounce" in gw.ok("suppress", "list", "user7@example.net")
    assert gw.ok("suppress", "export").count("user7@example.net") == 2
