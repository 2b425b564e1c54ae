"""`gateway lists|suppress|contacts ...`: lists, suppressions and consent records by hand or by CSV.

Row checks live in :mod:`gateway.ingest.csv_import` (pure); this module opens files, runs
the database work and prints.

``contacts import`` in short (``FILE`` below is the input's name without its suffix:
``contacts.csv`` has ``contacts.rejects.csv``, ``contacts.warnings.csv``, ``contacts.progress``):

- The file is scanned once for bad UTF-8 and its header is checked before anything is
  written, so a refused file leaves no trace.
- It is then streamed with the ``csv`` module (never held in memory) and written in chunks,
  one transaction each (``--chunk``, default 1000 rows). After each commit, ``FILE.progress``
  records the last committed line with the file's size and modification time
  (``{"line": N, "size": BYTES, "mtime_ns": NS, "list": KEY, ...}``). A crash loses at most
  the chunk in flight; ``--resume`` skips the committed rows (the file must be unchanged)
  and the progress file is removed once the import finishes. Without ``--resume`` an
  import refuses to start over a progress file, so that a crashed import is not repeated
  by accident. If the process dies between a commit and the progress file's update, a
  resume repeats that one chunk: harmless for contacts and consents, and it appends the
  chunk's history rows a second time.
- Importing the same file again creates no second contact (contacts are unique by address
  hash) and sets the same consent state, but appends new ``consent_history`` rows: the
  history records every import, as it records every other change.
- Rejected rows go to ``FILE.rejects.csv`` (original columns, ``line``, ``reason``) and
  hygiene warnings to ``FILE.warnings.csv`` (``line``, ``address``, ``warning``); both are
  rewritten by every run, also by a resumed one (rows before the resume point are checked
  again, which also rebuilds the duplicate detection).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import json
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.config.loader import load_settings
from gateway.config.units import KEY_RULE, is_key, parse_duration
from gateway.ingest import csv_import
from gateway.ingest.csv_import import ContactRow, Rejected, SuppressionRow
from gateway.ingest.rules import FREQUENCIES, SUPPRESSION_REASONS
from gateway.storage import consent_store
from gateway.storage.consent_store import ListRecord, SuppressionRecord
from gateway.storage.database import create_engine
from gateway.storage.errors import StorageError

T = TypeVar("T")
AddConfig = Callable[[argparse.ArgumentParser], None]

READ_CHUNK = 1 << 20
PAGE = 1000
MAX_SOURCE = 32  # consent_history.source
MAX_SUPPRESSION_SOURCE = 64


def add_parsers(verbs: Any, add_config: AddConfig) -> None:
    lists = verbs.add_parser("lists", help="mailing lists (topics) that consent is given for")
    actions = lists_actions = lists.add_subparsers(dest="lists_verb", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", help="create a list",
        description="Create a list. Names and descriptions are per locale: --name Offers sets the "
                    "default, --name de=Angebote the German one (=TEXT forces the default).")
    add.add_argument("key", metavar="KEY", help=f"the list's key: {KEY_RULE}")
    add.add_argument("--name", action="append", required=True, metavar="[LOCALE=]TEXT",
                     help="friendly name; repeat for more locales")
    add.add_argument("--description", action="append", default=[], metavar="[LOCALE=]TEXT",
                     help="what subscribers get; repeat for more locales")
    add.add_argument("--kind", choices=["marketing", "transactional"], default="marketing")
    add.add_argument("--double-opt-in", action="store_true",
                     help="consent needs a confirmation; imports then need a proof column")
    add.add_argument("--cap", action="append", default=[], metavar="FREQUENCY=DAYS",
                     help=f"days between messages for a frequency ({', '.join(FREQUENCIES)})")
    actions.add_parser("list", help="show every list")

    suppress = verbs.add_parser("suppress", help="addresses that get no mail (global, per list or campaign)")
    actions = suppress_actions = suppress.add_subparsers(dest="suppress_verb", required=True,
                                                         metavar="ACTION")
    add = actions.add_parser("add", help="suppress an address")
    add.add_argument("target", metavar="ADDRESS",
                     help="address, or the SHA-256 hex of the lower-cased address")
    _scope_options(add)
    add.add_argument("--reason", default="manual", choices=SUPPRESSION_REASONS)
    add.add_argument("--expires", metavar="DURATION",
                     help="lift it after this long (e.g. 30d); default never")
    add.add_argument("--note")
    add.add_argument("--source", default="cli", help="who or what asked (default: cli)")
    remove = actions.add_parser("remove", help="lift suppressions of an address (all, or those matching)")
    remove.add_argument("target", metavar="ADDRESS", help="address or address hash")
    _scope_options(remove, default=None)
    remove.add_argument("--reason", choices=SUPPRESSION_REASONS)
    listing = actions.add_parser("list", help="show suppressions, oldest first")
    listing.add_argument("target", nargs="?", metavar="ADDRESS", help="only this address (or address hash)")
    listing.add_argument("--limit", type=int, default=50)
    importing = actions.add_parser(
        "import", help="suppress the addresses of a CSV file",
        description="Columns: address (or email) or address_hash (64 hex digits, SHA-256 of the lower-cased "
                    "address), and optionally scope (global), key, reason (import), expires (duration or ISO "
                    "8601 time) and note. Rejected rows go to FILE.rejects.csv. Importing again is harmless.")
    importing.add_argument("file", type=Path, metavar="FILE.csv")
    importing.add_argument("--source", default="import", help="recorded as the source (default: import)")
    importing.add_argument("--reject-file", type=Path, metavar="PATH")
    importing.add_argument("--chunk", type=int, default=1000, help="rows per transaction")
    export = actions.add_parser("export", help="write every suppression as CSV (importable again)")
    export.add_argument("--out", type=Path, metavar="FILE", help="default: standard output")

    contacts_parser = verbs.add_parser("contacts", help="contacts and their consent records")
    actions = contacts_actions = contacts_parser.add_subparsers(dest="contacts_verb", required=True,
                                                                metavar="ACTION")
    importing = actions.add_parser(
        "import", help="record confirmed consent for the addresses of a CSV file",
        description="The address column is 'email' or 'address'. Rows with a bad address, a duplicate, a bad "
                    "value or (for a double opt-in list) no proof go to FILE.rejects.csv with their line "
                    "number and reason; hygiene warnings (likely typos, role accounts) go to "
                    "FILE.warnings.csv and the row is imported as written (contacts.csv -> "
                    "contacts.rejects.csv, contacts.warnings.csv). Commits every --chunk rows and notes the "
                    "last committed line in FILE.progress; --resume continues an import that stopped. "
                    "Importing a file again creates no duplicate contact but adds consent history rows.")
    importing.add_argument("file", type=Path, metavar="FILE.csv")
    importing.add_argument("--list", dest="list_key", required=True, metavar="KEY")
    importing.add_argument("--consent-source", default="import",
                           help="recorded with each consent (default: import)")
    for name, text in (("proof", "proof of consent (required for double opt-in lists)"),
                       ("ip", "IP address consent was given from"),
                       ("time", "when consent was given (ISO 8601)"),
                       ("frequency", f"chosen frequency ({', '.join(FREQUENCIES)})"),
                       ("locale", "the contact's locale (de, pt-BR ...)")):
        importing.add_argument(f"--{name}-column", metavar="COL", help=text)
    importing.add_argument("--reject-file", type=Path, metavar="PATH", help="default: FILE.rejects.csv")
    importing.add_argument("--chunk", type=int, default=1000, help="rows per transaction (default 1000)")
    importing.add_argument("--resume", action="store_true",
                           help="continue after the rows FILE.progress names as committed")
    export = actions.add_parser("export", help="write consents with their latest proof as CSV")
    export.add_argument("--list", dest="list_key", metavar="KEY", help="only this list")
    export.add_argument("--out", type=Path, metavar="FILE", help="default: standard output")

    for group in (lists_actions, suppress_actions, contacts_actions):
        for action in group.choices.values():
            add_config(action)


def _scope_options(parser: argparse.ArgumentParser, default: str | None = "global") -> None:
    parser.add_argument("--scope", choices=csv_import.SCOPES, default=default,
                        help="global (default for add), or one list or campaign")
    parser.add_argument("--key", help="the list or campaign key (with --scope list|campaign)")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    db = _Db(settings.storage.url)
    try:
        if args.verb == "lists":
            return _add_list(db, args) if args.lists_verb == "add" else _print_lists(db)
        if args.verb == "suppress":
            return {"add": _suppress_add, "remove": _suppress_remove, "list": _suppress_list,
                    "import": _suppress_import, "export": _suppress_export}[args.suppress_verb](db, args)
        if args.contacts_verb == "import":
            return _contacts_import(db, args, settings.consent.role_accounts)
        return _contacts_export(db, args)
    finally:
        db.close()


class _Db:
    """One event loop for the whole command, so that plain (blocking) file I/O stays outside it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._runner: asyncio.Runner | None = None
        self._engine: AsyncEngine | None = None

    def _run(self, op: Callable[[AsyncConnection], Awaitable[T]], write: bool) -> T:
        if self._runner is None:
            self._runner = asyncio.Runner()
        return self._runner.run(self._go(op, write))

    async def _go(self, op: Callable[[AsyncConnection], Awaitable[T]], write: bool) -> T:
        if self._engine is None:
            self._engine = create_engine(self.url)
        try:
            async with (self._engine.begin() if write else self._engine.connect()) as conn:
                return await op(conn)
        except SQLAlchemyError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            missing = "no such table" in first or "does not exist" in first
            hint = " (has `gateway db upgrade` been run?)" if missing else ""
            raise StorageError(f"database: {first[:200]}{hint}") from exc

    def read(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        return self._run(op, write=False)

    def write(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``op`` in one transaction; returns once it is committed."""
        return self._run(op, write=True)

    def close(self) -> None:
        if self._runner is None:
            return
        if self._engine is not None:
            self._runner.run(self._engine.dispose())
        self._runner.close()


# -- lists ------------------------------------------------------------------------------------

def _add_list(db: _Db, args: argparse.Namespace) -> int:
    if not is_key(args.key):
        raise ValueError(f"bad list key {args.key!r}: {KEY_RULE}")
    names = csv_import.localized(args.name, "name")
    descriptions = csv_import.localized(args.description, "description")
    caps: dict[str, float] = {}
    for frequency, days in csv_import.parse_assignments(args.cap, "cap").items():
        if frequency not in FREQUENCIES:
            raise ValueError(f"bad cap {frequency}={days}: the frequency is one of {', '.join(FREQUENCIES)}")
        try:
            caps[frequency] = float(days)
        except ValueError:
            caps[frequency] = -1.0
        if not 0 < caps[frequency] < 10_000:
            raise ValueError(f"bad cap {frequency}={days}: expected a number of days above 0")
    record = ListRecord(args.key, args.kind, args.double_opt_in, names, descriptions, caps, datetime.now(UTC))
    if not db.write(lambda conn: consent_store.add_list(conn, record)):
        print(f"gateway: list {args.key} exists", file=sys.stderr)
        return 1
    print(f"list {args.key} added ({args.kind}{', double opt-in' if args.double_opt_in else ''}): "
          f"{csv_import.describe_localized(names)}")
    return 0


def _print_lists(db: _Db) -> int:
    records = db.read(consent_store.all_lists)
    if not records:
        print("no lists yet: add one with `gateway lists add KEY --name NAME -c CONFIG`")
        return 0
    rows = [(r.key, r.kind, "yes" if r.double_opt_in else "no", csv_import.describe_localized(r.names))
            for r in records]
    _print_table(("KEY", "KIND", "DOI", "NAMES"), rows)
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [f"{cell:{width}}" for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


# -- suppressions -------------------------------------------------------------------------------

def _target(text: str) -> tuple[str | None, str]:
    found = csv_import.parse_target(text)
    if found is None:
        raise ValueError(f"bad address {text!r}: expected an address or a 64-hex address hash")
    return found


def _scope(args: argparse.Namespace) -> tuple[str | None, str | None]:
    key = args.key
    if args.scope is None:
        if key is not None and not is_key(key):
            raise ValueError(f"bad key {key!r}: {KEY_RULE}")
        return None, key
    problem = csv_import.check_scope(args.scope, key or "")
    if problem:
        raise ValueError(problem if args.scope == "global" or key else f"--scope {args.scope} needs --key")
    return args.scope, key or ""


def _suppress_add(db: _Db, args: argparse.Namespace) -> int:
    address, digest = _target(args.target)
    scope, key = _scope(args)
    assert scope is not None and key is not None
    source = args.source.strip()
    if not source or len(source) > MAX_SUPPRESSION_SOURCE:
        raise ValueError(f"bad --source: 1 to {MAX_SUPPRESSION_SOURCE} characters")
    now = datetime.now(UTC)
    expires_at = None
    if args.expires is not None:
        seconds = parse_duration(args.expires)
        if seconds <= 0:
            raise ValueError(f"bad --expires {args.expires!r}: must be longer than 0")
        expires_at = now + timedelta(seconds=seconds)
    record = SuppressionRecord(address, digest, scope, key, args.reason, source, now, expires_at, args.note)
    db.write(lambda conn: consent_store.add_suppressions(conn, [record]))
    until = f", until {expires_at:%Y-%m-%d %H:%M:%S} UTC" if expires_at else ""
    print(f"suppressed {address or digest} ({_describe_scope(scope, key)}, {args.reason}{until})")
    return 0


def _describe_scope(scope: str, key: str) -> str:
    return scope if scope == "global" else f"{scope} {key}"


def _suppress_remove(db: _Db, args: argparse.Namespace) -> int:
    address, digest = _target(args.target)
    scope, key = _scope(args)
    count = db.write(lambda conn: consent_store.remove_suppressions(conn, digest, scope=scope, scope_key=key,
                                                                    reason=args.reason))
    if not count:
        print(f"no suppression of {address or digest} matched")
        return 1
    print(f"removed {count} suppression{'s' if count != 1 else ''} of {address or digest}")
    return 0


def _suppress_list(db: _Db, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    digest = _target(args.target)[1] if args.target else None
    found = db.read(lambda conn: consent_store.find_suppressions(conn, address_hash=digest,
                                                                 limit=args.limit + 1))
    if not found:
        print(f"no suppressions{' of ' + args.target if args.target else ''}")
        return 1 if args.target else 0
    now = datetime.now(UTC)
    rows = []
    for _, record in found[:args.limit]:
        expires = "never"
        if record.expires_at is not None:
            expires = f"{record.expires_at:%Y-%m-%d %H:%M}" + (" (past)" if record.expires_at <= now else "")
        rows.append((record.address or record.address_hash, _describe_scope(record.scope, record.scope_key),
                     record.reason, record.source, f"{record.created_at:%Y-%m-%d %H:%M}", expires,
                     record.note or ""))
    _print_table(("ADDRESS", "SCOPE", "REASON", "SOURCE", "CREATED (UTC)", "EXPIRES", "NOTE"), rows)
    if len(found) > args.limit:
        print("... more: raise --limit or use `gateway suppress export`")
    return 0


EXPORT_SUPPRESSION_HEADER = ("address", "address_hash", "scope", "key", "reason", "expires", "note", "source",
                             "created")


def _suppress_export(db: _Db, args: argparse.Namespace) -> int:
    count = 0
    with _output(args.out) as out:
        writer = csv.writer(out)
        writer.writerow(EXPORT_SUPPRESSION_HEADER)
        after = 0
        while True:
            page = db.read(functools.partial(_suppression_page, after=after))
            for _, r in page:
                writer.writerow((r.address or "", r.address_hash, r.scope, r.scope_key, r.reason,
                                 _iso(r.expires_at), r.note or "", r.source, _iso(r.created_at)))
            count += len(page)
            if len(page) < PAGE:
                break
            after = page[-1][0]
    if args.out is not None:
        print(f"exported {count} suppression{'s' if count != 1 else ''} to {args.out}")
    return 0


async def _suppression_page(conn: AsyncConnection, after: int) -> list[tuple[int, SuppressionRecord]]:
    return await consent_store.find_suppressions(conn, after_id=after, limit=PAGE)


def _suppress_import(db: _Db, args: argparse.Namespace) -> int:
    source = args.source.strip()
    if not source or len(source) > MAX_SUPPRESSION_SOURCE:
        raise ValueError(f"bad --source: 1 to {MAX_SUPPRESSION_SOURCE} characters")
    _check_chunk(args.chunk)
    reject_path = _side_file(args.file, args.reject_file, ".rejects.csv")
    header = _prepare_csv(args.file)
    columns = _columns(args.file, lambda: csv_import.suppression_columns(header))
    now = datetime.now(UTC)
    imported = rejected = 0
    pending: dict[tuple[str, str, str, str], SuppressionRecord] = {}

    def flush() -> None:
        records = list(pending.values())
        db.write(lambda conn: consent_store.add_suppressions(conn, records))
        pending.clear()

    with _csv_rows(args.file) as rows, _atomic_writer(reject_path) as reject_out:
        rejects = csv.writer(reject_out)
        rejects.writerow([*header, "line", "reason"])
        for line, values in rows:
            checked = csv_import.check_suppression(values, line, columns, now=now)
            if isinstance(checked, Rejected):
                rejected += 1
                rejects.writerow(csv_import.reject_record(values, columns.width, checked))
                continue
            imported += 1
            # The same suppression twice in one statement would trouble PostgreSQL's ON CONFLICT.
            pending[(checked.address_hash, checked.scope, checked.key, checked.reason)] = _suppression_record(
                checked, source, now)
            if len(pending) >= args.chunk:
                flush()
        if pending:
            flush()
    print(f"imported {imported} suppression{'s' if imported != 1 else ''}, rejected {rejected} "
          f"row{'s' if rejected != 1 else ''} (see {reject_path})")
    return 0


def _suppression_record(row: SuppressionRow, source: str, now: datetime) -> SuppressionRecord:
    return SuppressionRecord(row.address, row.address_hash, row.scope, row.key, row.reason, source, now,
                             row.expires_at, row.note)


# -- files ---------------------------------------------------------------------------------------

def _check_chunk(chunk: int) -> None:
    if not 1 <= chunk <= 100_000:
        raise ValueError("--chunk must be between 1 and 100000")


def _side_file(path: Path, given: Path | None, suffix: str) -> Path:
    """FILE.rejects.csv and friends next to the input (``contacts.csv`` -> ``contacts.rejects.csv``)."""
    side = given if given is not None else path.with_name(path.stem + suffix)
    with contextlib.suppress(OSError):
        if side.resolve() == path.resolve():
            raise ValueError(f"{side} is the input file; name another --reject-file")
    return side


def _prepare_csv(path: Path) -> list[str]:
    """Refuse a missing, non-UTF-8 or empty file before anything is written; return its header."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open("rb") as raw:
        bad = csv_import.first_non_utf8_line(iter(lambda: raw.read(READ_CHUNK), b""))
    if bad is not None:
        raise ValueError(f"{path} is not UTF-8 (line {bad}): save it as UTF-8")
    with _csv_rows(path, header=True) as rows:
        first = next(rows, None)
    if first is None:
        raise ValueError(f"{path} is empty: expected a header line with the column names")
    return first[1]


def _columns(path: Path, find: Callable[[], T]) -> T:
    try:
        return find()
    except csv_import.ColumnError as exc:
        raise ValueError(f"{path}: {exc}") from None


@contextlib.contextmanager
def _csv_rows(path: Path, *, header: bool = False) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """(line where the record starts, fields) for each non-blank record; the header is
    skipped unless ``header``."""
    with path.open("r", encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text)

        def records() -> Iterator[tuple[int, list[str]]]:
            start, first = 1, True
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise ValueError(f"{path} line {start}: bad CSV ({exc})") from None
                line, start = start, reader.line_num + 1
                if not values or values == [""]:
                    continue
                if first:
                    first = False
                    if not header:
                        continue
                yield line, values

        yield records()


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        try:
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:  # `... export | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    with _atomic_writer(path) as out:
        yield out


@contextlib.contextmanager
def _atomic_writer(path: Path) -> Iterator[IO[str]]:
    """A text file that appears complete at ``path`` or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _iso(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).isoformat()


# -- contacts import --------------------------------------------------------------------------------

@dataclass
class _Counts:
    imported: int = 0
    new: int = 0
    suppressed: int = 0
    skipped: int = 0
    rejected: int = 0
    warnings: int = 0
    chunks: int = 0


@dataclass(frozen=True)
class _Progress:
    line: int
    size: int
    mtime_ns: int
    list_key: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> _Progress:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            counts = {k: int(data[k]) for k in ("imported", "new", "suppressed") if k in data}
            return cls(int(data["line"]), int(data["size"]), int(data["mtime_ns"]), data.get("list"), counts)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable progress file ({exc}); delete it to start over") from None

    def save(self, path: Path) -> None:
        data: dict[str, Any] = {"line": self.line, "size": self.size, "mtime_ns": self.mtime_ns,
                                "list": self.list_key, **self.counts}
        temp = path.with_name(f".{path.name}.tmp")
        with temp.open("w", encoding="utf-8") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)


def _contacts_import(db: _Db, args: argparse.Namespace, role_accounts: Sequence[str]) -> int:
    path: Path = args.file
    _check_chunk(args.chunk)
    source = args.consent_source.strip()
    if not source or len(source) > MAX_SOURCE:
        raise ValueError(f"bad --consent-source: 1 to {MAX_SOURCE} characters")
    reject_path = _side_file(path, args.reject_file, ".rejects.csv")
    warning_path = _side_file(path, None, ".warnings.csv")
    progress_path = path.with_name(path.stem + ".progress")
    header = _prepare_csv(path)
    columns = _columns(path, lambda: csv_import.contact_columns(
        header, proof=args.proof_column, ip=args.ip_column, time=args.time_column,
        frequency=args.frequency_column, locale=args.locale_column))
    info = db.read(lambda conn: consent_store.list_info(conn, args.list_key))
    if info is None:
        raise ValueError(f"no list {args.list_key!r}: create it with "
                         f"`gateway lists add {args.list_key} --name NAME`")
    if info.double_opt_in and columns.proof is None:
        raise ValueError(f"list {info.key} requires double opt-in: name the column with the confirmation "
                         f"proof with --proof-column")
    stat = path.stat()
    resume_after = 0
    counts = _Counts()
    if progress_path.exists():
        progress = _Progress.load(progress_path)
        if not args.resume:
            raise ValueError(f"an import of {path} stopped after line {progress.line} ({progress_path}): "
                             f"continue it with --resume, or delete that file to start over")
        if (progress.size, progress.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            raise ValueError(f"{path} changed since the import stopped ({progress_path}): cannot resume; "
                             f"delete that file to start over")
        if progress.list_key not in (None, info.key):
            raise ValueError(f"{progress_path} is an import into list {progress.list_key}, not {info.key}")
        resume_after = progress.line
        counts = _Counts(**progress.counts)
    elif args.resume:
        print(f"gateway: no {progress_path}: importing from the start", file=sys.stderr)

    seen = csv_import.Seen()
    list_key, double_opt_in = info.key, info.double_opt_in
    roles = frozenset(name.lower() for name in role_accounts)
    show = _progress_printer()
    chunk: list[ContactRow] = []
    committed = resume_after

    def commit(last_line: int) -> None:
        nonlocal committed
        now = datetime.now(UTC)
        rows = list(chunk)
        new, suppressed, skipped = db.write(
            lambda conn: consent_store.import_consents(conn, rows, list_key, source, now))
        counts.imported += len(rows)
        counts.new += new
        counts.suppressed += suppressed
        counts.skipped += skipped
        counts.chunks += 1
        chunk.clear()
        _Progress(last_line, stat.st_size, stat.st_mtime_ns, list_key,
                  {"imported": counts.imported, "new": counts.new, "suppressed": counts.suppressed}
                  ).save(progress_path)
        committed = last_line
        show(counts, False)

    try:
        with (_csv_rows(path) as rows, _atomic_writer(reject_path) as reject_out,
              _atomic_writer(warning_path) as warning_out):
            rejects, warnings = csv.writer(reject_out), csv.writer(warning_out)
            rejects.writerow([*header, "line", "reason"])
            warnings.writerow(["line", "address", "warning"])
            line = 0
            for line, values in rows:
                checked = csv_import.check_contact(
                    values, line, columns, seen=seen, double_opt_in=double_opt_in, file_name=path.name,
                    now=datetime.now(UTC), role_local_parts=roles)
                if isinstance(checked, Rejected):
                    counts.rejected += 1
                    rejects.writerow(csv_import.reject_record(values, columns.width, checked))
                    continue
                for warning in checked.warnings:
                    counts.warnings += 1
                    warnings.writerow([line, checked.address, warning])
                if line <= resume_after:
                    continue
                chunk.append(checked)
                if len(chunk) >= args.chunk:
                    commit(line)
            if chunk:
                commit(line)
    except (StorageError, ValueError) as exc:
        show(counts, True)
        if not progress_path.exists():
            raise
        problem = (f"{exc}; rows up to line {committed} are committed: once the cause is fixed, run the "
                   f"same command with --resume")
        raise (StorageError(problem) if isinstance(exc, StorageError) else ValueError(problem)) from exc
    show(counts, True)
    with contextlib.suppress(FileNotFoundError):
        progress_path.unlink()
    print(f"imported {counts.imported} contacts ({counts.new} new), rejected {counts.rejected} rows "
          f"(see {reject_path}), {counts.warnings} warnings, {counts.suppressed} already suppressed, "
          f"{counts.skipped} skipped (withdrawn later, or erased)")
    return 0


def _progress_printer() -> Callable[[_Counts, bool], None]:
    """A single updating line on a terminal; otherwise a line every 10 chunks."""
    tty = sys.stderr.isatty()

    def show(counts: _Counts, final: bool) -> None:
        text = f"imported {counts.imported} / rejected {counts.rejected} rows"
        if tty:
            print(f"\r{text}", end="\n" if final else "", file=sys.stderr, flush=True)
        elif not final and counts.chunks % 10 == 0:
            print(text, file=sys.stderr, flush=True)
    return show


# -- contacts export -------------------------------------------------------------------------------

EXPORT_CONTACT_HEADER = ("address", "locale", "list", "status", "frequency", "source", "time", "proof")


def _contacts_export(db: _Db, args: argparse.Namespace) -> int:
    list_key: str | None = args.list_key
    if list_key is not None and db.read(lambda conn: consent_store.list_info(conn, list_key)) is None:
        raise ValueError(f"no list {list_key!r}")
    count = 0
    with _output(args.out) as out:
        writer = csv.writer(out)
        writer.writerow(EXPORT_CONTACT_HEADER)
        after = (0, "")
        while True:
            page = db.read(functools.partial(consent_store.consent_page, list_key=list_key, after=after,
                                             limit=PAGE))
            for row in page:
                writer.writerow((row.address, row.locale or "", row.list_key, row.status, row.frequency or "",
                                 row.source, _iso(row.at), row.proof))
            count += len(page)
            if len(page) < PAGE:
                break
            after = (page[-1].contact_id, page[-1].list_key)
    if args.out is not None:
        print(f"exported {count} consent{'s' if count != 1 else ''} to {args.out}")
    return 0
