"""The delivery store: delivery log and claims (nothing sent twice), suppression list, and the
reasons jobs were buried (beanstalkd keeps none). SQLite by default, WAL so that a pool of worker
processes shares one file."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .outcomes import Deferred, Skipped

SCHEMA_VERSION = 2
MIGRATIONS = {
    1: """
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        template TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- claimed | sent | skipped | bounced | deferred | exhausted | poison
        reason TEXT NOT NULL DEFAULT '',
        reply TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        claim_expires REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE INDEX deliveries_recipient ON deliveries (recipient);
    CREATE TABLE suppression (
        address TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        source TEXT NOT NULL,           -- bounce | unsubscribe | operator
        created_at REAL NOT NULL
    );
    CREATE TABLE failures (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        tube TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- poison | exhausted
        reason TEXT NOT NULL,
        body BLOB,
        created_at REAL NOT NULL
    );
    CREATE INDEX failures_job ON failures (server, job_id);
    """,
    2: """
    CREATE TABLE rate_slots (
        domain TEXT PRIMARY KEY,
        next_at REAL NOT NULL           -- the earliest time the next message may go
    );
    CREATE TABLE rate_bookings (
        key TEXT PRIMARY KEY,           -- a job released to come back at its booked slot
        slot_at REAL NOT NULL
    );
    """,
}
FINAL = ("sent", "skipped", "bounced")


@dataclass(frozen=True)
class Delivery:
    key: str
    recipient: str
    template: str
    outcome: str
    reason: str
    reply: str
    attempts: int
    updated_at: float


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def holder_is_dead(holder: str) -> bool:
    """A claim held by a process of this host that no longer exists (killed, then restarted by
    supervisord) need not wait for its lease to run out."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self.me = worker_id()
        self._migrate()

    def _migrate(self) -> None:
        with self._tx():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for v in range(version + 1, SCHEMA_VERSION + 1):
                # executescript() would commit mid-transaction; run the statements one by one
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={v}")

    def _tx(self) -> "_Tx":
        return _Tx(self._db)

    # -- claims and the delivery log ------------------------------------------------------------
    def claim(self, key: str, recipient: str, template: str, lease: float) -> None:
        """Take the key for this process, or raise: Skipped if it already ended, Deferred if a
        live worker holds it (retried after its lease, so a crashed holder loses nothing)."""
        now = time.time()
        with self._tx():
            row = self._db.execute(
                "SELECT outcome, claimed_by, claim_expires FROM deliveries WHERE key = ?", (key,)
            ).fetchone()
            if row is not None:
                outcome, holder, expires = row
                if outcome in FINAL:
                    raise Skipped(f"duplicate: key already {outcome}")
                if outcome == "claimed" and holder != self.me and expires > now and not holder_is_dead(holder):
                    raise Deferred(f"duplicate: key claimed by {holder}", delay=max(1, round(expires - now)))
            self._db.execute(
                "INSERT INTO deliveries (key, recipient, template, outcome, attempts, claimed_by,"
                " claim_expires, updated_at) VALUES (?, ?, ?, 'claimed', 1, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET outcome = 'claimed', attempts = attempts + 1,"
                " claimed_by = excluded.claimed_by, claim_expires = excluded.claim_expires,"
                " updated_at = excluded.updated_at",
                (key, recipient, template, self.me, now + lease, now),
            )

    def finish(self, key: str, recipient: str, template: str, outcome: str, reason: str = "",
               reply: str = "", *, overwrite_final: bool = True) -> None:
        """Record how a job ended; any outcome releases the claim. Without ``overwrite_final``
        (the job never held the claim) a row that ended or is claimed is left alone."""
        guard = "" if overwrite_final else " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced', 'claimed')"
        self._db.execute(
            "INSERT INTO deliveries (key, recipient, template, outcome, reason, reply, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET outcome = excluded.outcome,"
            " reason = excluded.reason, reply = excluded.reply, claimed_by = '', claim_expires = 0,"
            " updated_at = excluded.updated_at" + guard,
            (key, recipient, template, outcome, reason, reply, time.time()),
        )

    def deliveries(self, *, key: str | None = None, recipient: str | None = None,
                   limit: int = 100) -> list[Delivery]:
        where, args = "1 = 1", []
        if key is not None:
            where, args = "key = ?", [key]
        elif recipient is not None:
            where, args = "recipient = ?", [recipient.lower()]
        rows = self._db.execute(
            f"SELECT key, recipient, template, outcome, reason, reply, attempts, updated_at"
            f" FROM deliveries WHERE {where} ORDER BY updated_at DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [Delivery(*row) for row in rows]

    def outcome_counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT outcome, count(*) FROM deliveries GROUP BY outcome").fetchall())

    # -- per-domain rate limits -----------------------------------------------------------------
    def take_slot(self, domain: str, rate: float, key: str, now: float | None = None) -> float:
        """A send slot for ``domain`` at ``rate`` messages/s, shared by every worker on this store.
        Returns 0 when the message may go now; otherwise the slot is booked for ``key`` and the
        seconds until it are returned, so the job comes back to a slot of its own."""
        now = time.time() if now is None else now
        with self._tx():
            booked = self._db.execute("SELECT slot_at FROM rate_bookings WHERE key = ?", (key,)).fetchone()
            if booked is not None:
                if booked[0] <= now + 0.01:
                    self._db.execute("DELETE FROM rate_bookings WHERE key = ?", (key,))
                    return 0.0
                return booked[0] - now
            row = self._db.execute("SELECT next_at FROM rate_slots WHERE domain = ?", (domain,)).fetchone()
            slot = max(row[0] if row else now, now)
            self._db.execute(
                "INSERT INTO rate_slots (domain, next_at) VALUES (?, ?)"
                " ON CONFLICT (domain) DO UPDATE SET next_at = excluded.next_at",
                (domain, slot + 1.0 / rate),
            )
            if slot <= now + 0.01:
                return 0.0
            self._db.execute("DELETE FROM rate_bookings WHERE slot_at < ?", (now - 3600,))
            self._db.execute("INSERT INTO rate_bookings (key, slot_at) VALUES (?, ?)", (key, slot))
        return slot - now

    # -- suppression ----------------------------------------------------------------------------
    def suppressed(self, address: str) -> tuple[str, str] | None:
        row = self._db.execute(
            "SELECT source, reason FROM suppression WHERE address = ?", (address.lower(),)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def suppress(self, address: str, reason: str, source: str) -> None:
        self._db.execute(
            "INSERT INTO suppression (address, reason, source, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (address) DO UPDATE SET reason = excluded.reason, source = excluded.source",
            (address.lower(), reason, source, time.time()),
        )

    def unsuppress(self, address: str) -> bool:
        return self._db.execute("DELETE FROM suppression WHERE address = ?", (address.lower(),)).rowcount > 0

    def suppression_list(self) -> list[tuple[str, str, str, float]]:
        return self._db.execute(
            "SELECT address, source, reason, created_at FROM suppression ORDER BY address"
        ).fetchall()

    # -- buried jobs ----------------------------------------------------------------------------
    def record_failure(self, server: str, job_id: int, tube: str, outcome: str, reason: str,
                       body: bytes) -> None:
        self._db.execute(
            "INSERT INTO failures (server, job_id, tube, outcome, reason, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (server, job_id, tube, outcome, reason, body, time.time()),
        )

    def failure(self, server: str, job_id: int) -> tuple[str, str, float] | None:
        return self._db.execute(
            "SELECT outcome, reason, created_at FROM failures WHERE server = ? AND job_id = ?"
            " ORDER BY id DESC LIMIT 1", (server, job_id)
        ).fetchone()

    def failed_job_ids(self, server: str, limit: int = 200) -> list[int]:
        rows = self._db.execute(
            "SELECT DISTINCT job_id FROM failures WHERE server = ? ORDER BY job_id DESC LIMIT ?", (server, limit)
        ).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self._db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: a claim's read and write must not interleave across processes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
