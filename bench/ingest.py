"""Ingest gate decisions against a large embedded database, and what they cost the event loop.

Builds (or reuses, ``--db PATH``) a SQLite database at the gateway's newest schema
(``gateway.storage.migrate.upgrade``; WAL, and synchronous=FULL whenever the gateway opens
it) holding ``--suppressions`` suppression rows, ``--consents`` contacts each with one
consent on the marketing list ``news``, and a last-send row for one contact in ten. The
fill goes through the sqlite3 module directly (rows sorted by address hash, big
transactions, no journal and synchronous=OFF during the fill only; WAL is switched back on
at the end); hashes are SHA-256 by ``gateway.ingest.addresses.address_hash``, computed on
every core. A database passed with ``--db`` is kept, with a ``.json`` sidecar naming its
row counts, and reused on the next run.

Address ``n`` is ``user{n}@domain{n % 5000}.example``. Suppressions cover n in [0, S)
(global ones of every reason, some expired or expiring, plus list ``news`` and campaign
scopes); contacts cover n in [S/2, S/2 + C), so half the suppressed addresses are contacts
too; addresses above both ranges are unknown. Lookups draw a third from each group.

Then, with the real async stack (``Database`` on aiosqlite, ``Gate``, the loop the gateway
runs on):

- ``at_rcpt(addr, None)`` (global suppressions) and ``at_data([addr], marketing/news)``
  (suppressions, consent, last send, list), one at a time, ``--lookups`` each, after
  ``--warmup`` untimed ones: p50/p90/p99/max in ms;
- event-loop lag: a ticker sleeps 1 ms in a loop and records actual - expected, first
  alone (the baseline) and then while ``--concurrency`` tasks run ``--lookups`` RCPT+DATA
  decisions; latencies under that load are reported too;
- the garbage collector's pauses in each phase, by generation: a full collection holds the
  GIL, so it stalls the loop whatever the database does (``--gc-freeze`` shows the figures
  with the startup heap frozen, which the gateway does not do).

Prints one JSON object and a summary line:
    python -m bench.ingest --db /var/tmp/bench-ingest.db   # 10M + 10M: ~3.5 min to build, ~2 min to run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import multiprocessing
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event

from gateway.ingest.addresses import address_hash
from gateway.ingest.gate import Gate
from gateway.rewrite.message import Controls
from gateway.storage.database import Database
from gateway.storage.migrate import upgrade

LIST_KEY = "news"
DOMAINS = 5000
CHUNK = 250_000  # addresses per hashing task
BATCH = 500_000  # rows per fill transaction
LAYOUT = 1  # bump when the generated data changes; a reused --db must match
TICK = 0.001
TARGET_P99_MS = 2.0
T = TypeVar("T")


def address(n: int) -> str:
    return f"user{n}@domain{n % DOMAINS}.example"


# -- building the database ---------------------------------------------------------------------


def _hash_range(bounds: tuple[int, int]) -> list[tuple[str, int]]:
    """(hash, n) for n in [start, stop), sorted by hash (runs in a worker process)."""
    start, stop = bounds
    pairs = [(address_hash(address(n)), n) for n in range(start, stop)]
    pairs.sort()
    return pairs


def hashed_sorted(start: int, stop: int, what: str) -> list[tuple[str, int]]:
    """Every (hash, n) of the range in hash order, hashed on all cores."""
    bounds = [(lo, min(lo + CHUNK, stop)) for lo in range(start, stop, CHUNK)]
    pairs: list[tuple[str, int]] = []
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        for chunk in pool.imap_unordered(_hash_range, bounds):
            pairs.extend(chunk)
            progress(f"hashing {what}: {len(pairs):,}/{stop - start:,}", started)
    pairs.sort()  # timsort merges the sorted runs
    return pairs


def progress(text: str, started: float) -> None:
    print(f"\r[{time.perf_counter() - started:6.1f} s] {text}   ", end="", file=sys.stderr, flush=True)


def stamp(at: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text for a UTC instant (stored without a zone)."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# Suppression mix by n % 100: mostly global hard bounces, then unsubscribes and the rest.
def suppression_of(n: int, now: datetime) -> tuple[str, str, str, str, str | None, bool]:
    """(scope, scope key, reason, source, expires_at, address kept) of suppression ``n``."""
    bucket = n % 100
    if bucket < 55:
        return "global", "", "hard-bounce", "bounce", None, True
    if bucket < 70:
        return "global", "", "unsubscribe", "list-unsubscribe", None, True
    if bucket < 75:
        return "global", "", "complaint", "fbl", None, True
    if bucket < 78:  # temporary holds: half already lapsed, half still running
        expires = now + timedelta(days=30) if n % 2 else now - timedelta(days=30)
        return "global", "", "manual", "admin", stamp(expires), True
    if bucket < 80:
        return "global", "", "import", "import", None, False  # hashed import: no address
    if bucket < 81:
        return "global", "", "spam-trap", "admin", None, True
    if bucket < 83:
        return "global", "", "role-account", "import", None, True
    if bucket < 95:
        return "list", LIST_KEY, "unsubscribe", "preference-page", None, True
    return "campaign", f"campaign-{n % 50}", "unsubscribe", "list-unsubscribe", None, True


def consent_of(n: int) -> tuple[str, str | None]:
    status = {0: "pending", 1: "withdrawn"}.get(n % 20, "confirmed")
    frequency = ("weekly", "weekly", "weekly", "weekly", "weekly", None, None, "daily", "monthly",
                 "biweekly")[(n // 20) % 10]
    return status, frequency


def suppression_rows(pairs: Iterable[tuple[str, int]], now: datetime,
                     created: str) -> Iterator[tuple[Any, ...]]:
    for digest, n in pairs:
        scope, key, reason, source, expires, keep = suppression_of(n, now)
        yield (address(n) if keep else None, digest, scope, key, reason, source, created, expires)


def sends_to(n: int) -> bool:
    return n % 10 == 3


def insert_all(conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]], total: int,
               what: str) -> None:
    started = time.perf_counter()
    rows = iter(rows)
    done = 0
    while batch := list(itertools.islice(rows, BATCH)):
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        done += len(batch)
        progress(f"{what}: {done:,}/{total:,}", started)
    print(file=sys.stderr)


def fill(path: Path, suppressions: int, consents: int) -> dict[str, float]:
    """Write the rows; return seconds per step."""
    now = datetime.now(UTC)
    created = stamp(now - timedelta(days=400))
    steps: dict[str, float] = {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1000000", "temp_store=MEMORY",
                       "locking_mode=EXCLUSIVE"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("INSERT INTO lists (key, kind, double_opt_in, names, descriptions, cap_days, "
                     "created_at) VALUES (?, 'marketing', 1, ?, '{}', '{}', ?)",
                     (LIST_KEY, json.dumps({"en": "News"}), created))

        started = time.perf_counter()
        pairs = hashed_sorted(0, suppressions, "suppressions")
        print(file=sys.stderr)
        steps["hash_suppressions_s"] = time.perf_counter() - started
        started = time.perf_counter()

        insert_all(conn, "INSERT INTO suppressions (address, address_hash, scope, scope_key, reason, source, "
                         "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   suppression_rows(pairs, now, created), suppressions, "suppressions")
        steps["insert_suppressions_s"] = time.perf_counter() - started
        del pairs
        gc.collect()

        started = time.perf_counter()
        first = suppressions // 2
        pairs = hashed_sorted(first, first + consents, "contacts")
        print(file=sys.stderr)
        steps["hash_contacts_s"] = time.perf_counter() - started
        started = time.perf_counter()
        insert_all(conn, "INSERT INTO contacts (id, address, address_hash, created_at, attributes) "
                         "VALUES (?, ?, ?, ?, '{}')",
                   ((i, address(n), digest, created) for i, (digest, n) in enumerate(pairs, 1)),
                   consents, "contacts")
        steps["insert_contacts_s"] = time.perf_counter() - started
        started = time.perf_counter()
        insert_all(conn, "INSERT INTO consents (contact_id, list_key, status, frequency, updated_at) "
                         "VALUES (?, ?, ?, ?, ?)",
                   ((i, LIST_KEY, *consent_of(n), created) for i, (_, n) in enumerate(pairs, 1)),
                   consents, "consents")
        steps["insert_consents_s"] = time.perf_counter() - started
        started = time.perf_counter()
        minutes = 30 * 24 * 60
        insert_all(conn, "INSERT INTO marketing_sends (address_hash, list_key, last_at) VALUES (?, ?, ?)",
                   ((digest, LIST_KEY, stamp(now - timedelta(minutes=(n * 7919) % minutes)))
                    for digest, n in pairs if sends_to(n)),
                   sum(1 for n in range(first, first + consents) if sends_to(n)), "marketing sends")
        steps["insert_sends_s"] = time.perf_counter() - started
        del pairs
        conn.execute("PRAGMA locking_mode=NORMAL")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return steps


def build(path: Path, suppressions: int, consents: int) -> dict[str, Any]:
    """Create the database at ``path`` (via a temporary name) and its sidecar; return the sidecar."""
    building = path.with_name(path.name + ".building")
    for stale in (building, Path(f"{building}-wal"), Path(f"{building}-shm")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    asyncio.run(upgrade(f"sqlite:///{building}"))
    steps = fill(building, suppressions, consents)
    building.rename(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        sends = conn.execute("SELECT count(*) FROM marketing_sends").fetchone()[0]
    meta = {"layout": LAYOUT, "suppressions": suppressions, "consents": consents, "marketing_sends": sends,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_s": round(time.perf_counter() - started, 1),
            "build_steps_s": {name: round(seconds, 1) for name, seconds in steps.items()}}
    sidecar(path).write_text(json.dumps(meta, indent=1))
    return meta


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def prepared(path: Path, suppressions: int, consents: int) -> tuple[dict[str, Any], bool]:
    """The sidecar of a database at ``path`` with these counts, built now if absent."""
    if path.exists():
        try:
            meta: dict[str, Any] = json.loads(sidecar(path).read_text())
        except (OSError, ValueError):
            raise SystemExit(f"bench: {path} exists but has no {sidecar(path).name}; delete it or pick "
                             "another --db") from None
        if (meta.get("layout"), meta.get("suppressions"), meta.get("consents")) != (
                LAYOUT, suppressions, consents):
            raise SystemExit(f"bench: {path} holds {meta.get('suppressions')} suppressions and "
                             f"{meta.get('consents')} consents (layout {meta.get('layout')}); pass those "
                             "counts or delete it")
        return meta, True
    path.parent.mkdir(parents=True, exist_ok=True)
    return build(path, suppressions, consents), False


# -- measuring -----------------------------------------------------------------------------------


def lookup_addresses(count: int, suppressions: int, consents: int, seed: int) -> list[tuple[str, str]]:
    """(group, address): a third suppressed, a third contacts, a third unknown, shuffled."""
    rng = random.Random(seed)
    first, unknown = suppressions // 2, suppressions // 2 + consents
    groups = [("suppressed", 0, suppressions), ("contact", first, first + consents),
              ("unknown", unknown, unknown + max(suppressions, consents, 1))]
    chosen = []
    for i in range(count):
        group, lo, hi = groups[i % 3]
        n = rng.randrange(lo, hi) if hi > lo else hi + i
        # Now and then the way a sender writes it: the gate must match it case-insensitively.
        text = address(n)
        chosen.append((group, text.capitalize() if rng.random() < 0.1 else text))
    rng.shuffle(chosen)
    return chosen


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    if not ordered:
        return {}

    def at(fraction: float) -> float:
        return round(ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] * 1000, 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3),
            "mean": round(sum(ordered) / len(ordered) * 1000, 3), "n": len(ordered)}


async def timed(op: Callable[[str], Awaitable[T]], addrs: Iterable[str]) -> tuple[list[float], list[T]]:
    """Each decision alone, one after the other: its latency and its result."""
    latencies: list[float] = []
    results: list[T] = []
    for addr in addrs:
        started = time.perf_counter()
        results.append(await op(addr))
        latencies.append(time.perf_counter() - started)
    return latencies, results


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    """Sleep 1 ms again and again; how late each wake-up comes is the loop's lag."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(max(time.perf_counter() - started - TICK, 0.0))


class GcPauses:
    """The garbage collector's pauses while in use, by generation: its full collections stop
    every thread (the loop included) for tens of ms, which explains most of the lag's maximum."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[int(info["generation"])].append(time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, dict[str, float]]:
        return {f"gen{g}": {"count": len(p), "max_ms": round(max(p, default=0.0) * 1000, 3),
                            "total_ms": round(sum(p) * 1000, 1)} for g, p in self.pauses.items()}


async def with_ticker(work: Awaitable[Any]) -> tuple[list[float], GcPauses]:
    lags: list[float] = []
    stop = asyncio.Event()
    with GcPauses() as pauses:
        tick = asyncio.create_task(ticker(stop, lags))
        try:
            await work
        finally:
            stop.set()
            await tick
    return lags, pauses


def tally(reasons: Iterable[str]) -> dict[str, int]:
    return dict(Counter(reasons).most_common())


async def query_plans(db: Database, gate: Gate, addr: str, path: Path) -> list[dict[str, Any]]:
    """The statements one marketing decision runs, with SQLite's plan for each."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await gate.at_data([addr], Controls("marketing", LIST_KEY))
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    plans = []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        for statement, parameters in seen:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
            plans.append({"sql": " ".join(statement.split()), "plan": [row[-1] for row in rows]})
    return plans


async def measure(args: argparse.Namespace, path: Path, suppressions: int, consents: int) -> dict[str, Any]:
    db = Database(f"sqlite:///{path}")
    await db.start()
    gate = Gate(db)
    marketing = Controls("marketing", LIST_KEY)
    try:
        warm = lookup_addresses(args.warmup, suppressions, consents, args.seed + 1)
        for _, addr in warm:
            await gate.at_rcpt(addr, None)
            await gate.at_data([addr], marketing)
        plans = await query_plans(db, gate, address(suppressions // 2), path)
        if args.gc_freeze:  # what a server could do once started: the collector skips the startup heap
            gc.collect()
            gc.freeze()

        chosen = lookup_addresses(args.lookups, suppressions, consents, args.seed)
        addrs = [addr for _, addr in chosen]

        # Keep only the reason: the bench should not grow the heap the collector walks.
        async def rcpt(addr: str) -> str:
            verdict = await gate.at_rcpt(addr, None)
            return verdict.refusal.reason if verdict else "accepted"

        async def data(addr: str) -> str:
            verdict = (await gate.at_data([addr], marketing)).get(addr)
            return verdict.refusal.reason if verdict else "accepted"

        with GcPauses() as rcpt_gc:
            rcpt_s, rcpt_reasons = await timed(rcpt, addrs)
        with GcPauses() as data_gc:
            data_s, data_reasons = await timed(data, addrs)
        by_group: dict[str, dict[str, Counter[str]]] = {}
        for (group, _), at_rcpt, at_data in zip(chosen, rcpt_reasons, data_reasons, strict=True):
            per = by_group.setdefault(group, {"at_rcpt": Counter(), "at_data": Counter()})
            per["at_rcpt"][at_rcpt] += 1
            per["at_data"][at_data] += 1

        baseline, baseline_gc = await with_ticker(asyncio.sleep(args.baseline_seconds))

        loaded_rcpt: list[float] = []
        loaded_data: list[float] = []
        queue = iter(lookup_addresses(args.lookups, suppressions, consents, args.seed + 2))

        async def session() -> None:
            for _, addr in queue:
                started = time.perf_counter()
                await gate.at_rcpt(addr, None)
                middle = time.perf_counter()
                await gate.at_data([addr], marketing)
                loaded_rcpt.append(middle - started)
                loaded_data.append(time.perf_counter() - middle)

        tracked = len(gc.get_objects())
        started = time.perf_counter()
        loaded, loaded_gc = await with_ticker(asyncio.gather(*(session() for _ in range(args.concurrency))))
        elapsed = time.perf_counter() - started
    finally:
        await db.close()
    return {
        "latency_ms": {"at_rcpt": stats_ms(rcpt_s), "at_data": stats_ms(data_s)},
        "verdicts": {"at_rcpt": tally(rcpt_reasons), "at_data": tally(data_reasons),
                     "by_group": {g: {k: dict(c.most_common()) for k, c in v.items()}
                                  for g, v in sorted(by_group.items())}},
        "concurrent": {"concurrency": args.concurrency, "decisions": 2 * args.lookups,
                       "decisions_per_s": round(2 * args.lookups / elapsed, 1),
                       "latency_ms": {"at_rcpt": stats_ms(loaded_rcpt), "at_data": stats_ms(loaded_data)}},
        "loop_lag_ms": {"tick_ms": TICK * 1000, "baseline": stats_ms(baseline),
                        "under_lookups": stats_ms(loaded),
                        "under_lookups_over_5ms": sum(lag > 0.005 for lag in loaded)},
        "gc_pauses": {"at_rcpt": rcpt_gc.summary(), "at_data": data_gc.summary(),
                      "baseline": baseline_gc.summary(), "under_lookups": loaded_gc.summary(),
                      "tracked_objects": tracked},
        "query_plans": plans,
        "pool": type(db.engine.pool).__name__,
    }


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                            "sqlalchemy": version("sqlalchemy"), "aiosqlite": version("aiosqlite")}
    with contextlib.suppress(OSError):
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        info["cpu"] = models[0] if models else None
    with contextlib.suppress(OSError, IndexError, ValueError):
        total = next(line for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
        info["memory_gib"] = round(int(total.split()[1]) / 1024 / 1024, 1)
    return info


def run_loop(main: Awaitable[dict[str, Any]], loop: str) -> dict[str, Any]:
    async def wrapper() -> dict[str, Any]:
        return await main

    if loop == "uvloop":
        import uvloop
        return uvloop.run(wrapper())
    return asyncio.run(wrapper())


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def run(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    meta, reused = prepared(path, args.suppressions, args.consents)
    size = file_size(path)
    load_before = os.getloadavg()
    results = run_loop(measure(args, path, args.suppressions, args.consents), args.loop)
    load_after = os.getloadavg()
    at_rcpt, at_data = results["latency_ms"]["at_rcpt"], results["latency_ms"]["at_data"]
    return {
        "benchmark": "ingest",
        "suppressions": args.suppressions, "consents": args.consents,
        "marketing_sends": meta["marketing_sends"],
        "lookups": args.lookups, "warmup": args.warmup, "concurrency": args.concurrency, "loop": args.loop,
        "gc_freeze": args.gc_freeze,
        "database": {"reused": reused, "path": str(path) if args.db else None, "bytes": size,
                     "gib": round(size / 2**30, 2), "built_at": meta["built_at"], "build_s": meta["build_s"],
                     "build_steps_s": meta["build_steps_s"],
                     "storage": "sqlite WAL synchronous=FULL (filled with synchronous=OFF, no journal)"},
        **results,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": max(at_rcpt["p99"], at_data["p99"]) < TARGET_P99_MS,
        "machine": {**machine(), "loadavg_1m_before": round(load_before[0], 2),
                    "loadavg_1m_after": round(load_after[0], 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suppressions", type=int, default=10_000_000)
    parser.add_argument("--consents", type=int, default=10_000_000)
    parser.add_argument("--lookups", type=int, default=20000, help="timed decisions of each kind")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed decisions first")
    parser.add_argument("--concurrency", type=int, default=20, help="tasks deciding while the ticker runs")
    parser.add_argument("--baseline-seconds", type=float, default=3.0, help="ticker alone, no lookups")
    parser.add_argument("--db", type=Path, help="keep the database here and reuse it when it exists")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after the warm-up (the gateway does not; shows the full "
                             "collections' share of the loop lag)")
    try:
        import uvloop  # noqa: F401
        default_loop = "uvloop"
    except ImportError:
        default_loop = "asyncio"
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default=default_loop,
                        help="event loop (default: uvloop when installed, as the gateway runs)")
    args = parser.parse_args()
    if args.db is not None:
        result = run(args, args.db.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            result = run(args, Path(tmp) / "ingest.db")
    print(json.dumps(result))
    lag = result["loop_lag_ms"]
    print(f"ingest: {result['suppressions']} suppressions + {result['consents']} consents, "
          f"at_rcpt p99 {result['latency_ms']['at_rcpt']['p99']} ms, "
          f"at_data p99 {result['latency_ms']['at_data']['p99']} ms, "
          f"loop lag p99 {lag['under_lookups']['p99']} ms (baseline {lag['baseline']['p99']} ms) "
          f"with {result['concurrency']} concurrent lookups at {result['concurrent']['decisions_per_s']} "
          f"decisions/s, DB {result['database']['gib']} GiB")


if __name__ == "__main__":
    main()
