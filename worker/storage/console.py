"""The console's figures: the ``console_counts`` and ``console_domains`` tables (migrations 20
and 21), per-minute counters that worker processes add (worker/web/tally.py) and the console's
pages and /metrics read (worker/web/figures.py, worker/web/metrics.py)."""

from __future__ import annotations

from typing import Any, Sequence

from .database import Database

# Upper bounds (seconds) of the enqueue-to-accepted latency buckets, columns l0.. of
# console_counts (counts per bucket, not cumulative); the last column counts what is above.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)

MIGRATIONS: dict[int, str] = {
    20: """
    CREATE TABLE console_counts (
        minute BIGINT NOT NULL,         -- unix time // 60
        tube TEXT NOT NULL,
        outcome TEXT NOT NULL,
        messages BIGINT NOT NULL,
        latency_sum DOUBLE PRECISION NOT NULL DEFAULT 0, -- seconds from enqueue to accepted, sent mail
        """ + "".join(f"l{i} BIGINT NOT NULL DEFAULT 0, " for i in range(16)) + """
        PRIMARY KEY (minute, tube, outcome)
    )
    """,
    21: """
    ALTER TABLE console_counts ADD COLUMN latency_max DOUBLE PRECISION NOT NULL DEFAULT 0;
    CREATE TABLE console_domains (
        minute BIGINT NOT NULL,
        domain TEXT NOT NULL,           -- a recipient domain, or '(other)' past the busiest of a write
        outcome TEXT NOT NULL,
        messages BIGINT NOT NULL,
        PRIMARY KEY (minute, domain, outcome)
    )
    """,
}


class ConsoleFigures:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add_console_counts(self, rows: Sequence[tuple[int, str, str, int, float, float, Sequence[int]]],
                           domains: Sequence[tuple[int, str, str, int]] = (), prune_before: int = 0) -> None:
        """Counters a worker process gathered in memory, added in one transaction: ``rows`` of
        (minute, tube, outcome, messages, latency_sum, latency_max, per-bucket latency counts),
        ``domains`` of (minute, recipient domain, outcome, messages); ``prune_before`` drops the
        per-domain minutes before it."""
        if not rows and not domains:
            return
        db = self.db
        with db.transaction():
            if rows:
                cols = ", ".join(f"l{i}" for i in range(len(LATENCY_BUCKETS) + 1))
                marks = ", ".join("?" for _ in range(len(LATENCY_BUCKETS) + 7))
                adds = ", ".join(f"{c} = console_counts.{c} + excluded.{c}"
                                 for c in ("messages", "latency_sum", *cols.split(", ")))
                adds += (", latency_max = CASE WHEN excluded.latency_max > console_counts.latency_max"
                         " THEN excluded.latency_max ELSE console_counts.latency_max END")
                args: list[Any] = []
                for minute, tube, outcome, messages, latency_sum, latency_max, buckets in rows:
                    args += [minute, tube, outcome, messages, latency_sum, latency_max, *buckets]
                db.execute(
                    f"INSERT INTO console_counts (minute, tube, outcome, messages, latency_sum, latency_max, {cols})"
                    f" VALUES {', '.join(f'({marks})' for _ in rows)}"
                    f" ON CONFLICT (minute, tube, outcome) DO UPDATE SET {adds}", args)
            if domains:
                db.execute(
                    "INSERT INTO console_domains (minute, domain, outcome, messages) VALUES "
                    + ", ".join("(?, ?, ?, ?)" for _ in domains)
                    + " ON CONFLICT (minute, domain, outcome) DO UPDATE SET"
                      " messages = console_domains.messages + excluded.messages",
                    [x for row in domains for x in row])
            if prune_before:
                db.execute("DELETE FROM console_domains WHERE minute < ?", (prune_before,))

    def console_rates(self, since_minute: int) -> list[tuple[int, str, int]]:
        """(minute, outcome, messages) from ``since_minute`` on, every tube together."""
        return [(int(m), str(o), int(n)) for m, o, n in self.db.all(
            "SELECT minute, outcome, sum(messages) FROM console_counts WHERE minute >= ?"
            " GROUP BY minute, outcome ORDER BY minute", (since_minute,))]

    def console_totals(self) -> list[tuple[str, str, int]]:
        """(tube, outcome, messages) since the store began: the pool's counters."""
        return [(str(t), str(o), int(n)) for t, o, n in self.db.all(
            "SELECT tube, outcome, sum(messages) FROM console_counts GROUP BY tube, outcome")]

    def console_latency(self, since_minute: int = 0) -> tuple[list[int], float, float]:
        """Per-bucket counts (LATENCY_BUCKETS, then above), the sum and the largest of the seconds,
        of mail sent from ``since_minute`` on."""
        cols = ", ".join(f"coalesce(sum(l{i}), 0)" for i in range(len(LATENCY_BUCKETS) + 1))
        row = self.db.one(f"SELECT coalesce(sum(latency_sum), 0), coalesce(max(latency_max), 0), {cols}"
                          f" FROM console_counts WHERE minute >= ? AND outcome = 'sent'", (since_minute,))
        return [int(x) for x in row[2:]], float(row[0]), float(row[1])

    def console_latency_by_minute(self, since_minute: int) -> list[tuple[int, list[int], float]]:
        """(minute, per-bucket counts, the largest seconds) of mail sent in each minute from
        ``since_minute`` on."""
        cols = ", ".join(f"sum(l{i})" for i in range(len(LATENCY_BUCKETS) + 1))
        rows = self.db.all(f"SELECT minute, max(latency_max), {cols} FROM console_counts"
                           f" WHERE minute >= ? AND outcome = 'sent' GROUP BY minute ORDER BY minute", (since_minute,))
        return [(int(r[0]), [int(x) for x in r[2:]], float(r[1])) for r in rows]

    def domain_figures(self, since_minute: int) -> list[tuple[str, str, int]]:
        """(recipient domain, outcome, messages) the workers counted from ``since_minute`` on."""
        return [(str(d), str(o), int(n)) for d, o, n in self.db.all(
            "SELECT domain, outcome, sum(messages) FROM console_domains WHERE minute >= ?"
            " GROUP BY domain, outcome", (since_minute,))]
