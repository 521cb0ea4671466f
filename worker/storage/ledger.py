"""The delivery ledger: the ``deliveries`` table (migrations 1 and 3), claims (nothing sent
twice), how each job ended, the journals of dead workers, and the delivery log as read back.

A claim is the key's row in state ``claimed`` with this process's id (``worker_id``) as the
fencing token and a lease; a batch's claims and its finishes each go in one transaction, one
statement batched for all rows (``Database.execute_returning_many``/``execute_many``), the
contested keys then looked at one by one. Other owners change a delivery row only through the
public methods here (``note_bounce``, ``note_reason``, ``outcome_for_update``, ``skip``).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..identity import process_id, process_of
from ..journal import Journal
from ..logs import get_logger
from ..outcomes import Deferred, Outcome, Poison, RetryPolicy, Skipped, Wait
from .database import Database
from .errors import StoreUnavailable
from .values import chunks, storable_text
from .workers import Workers

# Types are spelled so that both engines read them right: DOUBLE PRECISION is a float8 in
# PostgreSQL (its REAL would lose the sub-second part of a timestamp) and REAL-affine in SQLite.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        template TEXT NOT NULL,
        outcome TEXT NOT NULL,          -- claimed | sent | skipped | bounced | deferred | in_doubt | exhausted | poison
        reason TEXT NOT NULL DEFAULT '',
        reply TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT NOT NULL DEFAULT '',
        claim_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX deliveries_recipient ON deliveries (recipient)
    """,
    3: """
    ALTER TABLE deliveries ADD COLUMN free_releases INTEGER NOT NULL DEFAULT 0
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


@dataclass(frozen=True)
class Finish:
    """How one job ended, for ``Ledger.finish_many``."""
    key: str
    recipient: str
    template: str
    outcome: str
    reason: str = ""
    reply: str = ""
    overwrite_final: bool = True  # False: the job never held the claim; leave an ended or claimed row
    hold: float = 0.0
    free: bool = False


_CLAIM = (
    "INSERT INTO deliveries (key, recipient, template, outcome, attempts, claimed_by,"
    " claim_expires, updated_at) VALUES (?, ?, ?, 'claimed', 1, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET outcome = 'claimed', attempts = deliveries.attempts + 1,"
    " claimed_by = excluded.claimed_by, claim_expires = excluded.claim_expires,"
    " updated_at = excluded.updated_at"
    " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced')"
    " AND (deliveries.outcome NOT IN ('claimed', 'in_doubt')"
    "      OR (deliveries.outcome = 'in_doubt' AND deliveries.claim_expires <= excluded.updated_at)"
    "      OR deliveries.claimed_by = excluded.claimed_by)"  # another's claim, even expired: _claim_contested
    " RETURNING attempts"
)
_FINISH = (
    "INSERT INTO deliveries (key, recipient, template, outcome, reason, reply, claim_expires,"
    " free_releases, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
    " outcome = excluded.outcome, reason = excluded.reason, reply = excluded.reply, claimed_by = '',"
    " claim_expires = excluded.claim_expires,"
    " free_releases = deliveries.free_releases + excluded.free_releases,"
    " updated_at = excluded.updated_at"
)
_FINISH_UNCLAIMED = _FINISH + " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced', 'claimed')"
_REPLAY_SENT = _FINISH + " WHERE deliveries.outcome NOT IN ('sent', 'skipped', 'bounced')"
_REPLAY_MINE = _FINISH + " WHERE deliveries.outcome = 'claimed' AND deliveries.claimed_by = ?"
_JOURNALED = "recorded from the journal of a worker that died or stalled before its store write"
_JOURNALED_SENT = ("UPDATE deliveries SET outcome = 'sent', reason = ?, claimed_by = '', updated_at = ?"
                   " WHERE key = ? AND outcome = 'claimed' AND claimed_by = ?")
_JOURNALED_DOUBT = ("in doubt: the worker holding it died or stalled after writing the end of data, before the reply"
                    " (its journal); retried after the in-doubt delay")
_JOURNALED_IN_DOUBT = ("UPDATE deliveries SET outcome = 'in_doubt', reason = ?, claimed_by = '', claim_expires = ?,"
                       " updated_at = ? WHERE key = ? AND outcome = 'claimed' AND claimed_by = ?")

_connections = itertools.count(1)


def worker_id() -> str:
    """``host:pid:instance:n``: each store connection claims for itself, so two loops of one
    process (BEANMAIL_THREADS) never take each other's claim for their own; the instance
    (worker/identity.py) tells this run of the process from any other with the same pid."""
    return f"{process_id()}:{next(_connections)}"


def _runs(statements: Iterable[tuple[str, Sequence[Any]]]) -> list[tuple[str, list[Sequence[Any]]]]:
    """Consecutive rows of the same statement grouped, in order: one batch each."""
    return [(sql, [args for _, args in group]) for sql, group in itertools.groupby(statements, key=lambda s: s[0])]


class Ledger:
    def __init__(self, db: Database, workers: Workers, journal: Journal, me: str) -> None:
        self.db = db
        self.workers = workers
        self.journal = journal  # keys sent, not yet recorded (worker/journal.py)
        self.me = me
        # set by the pipeline from its settings: how long a key found in doubt is held, and how
        # long a silent worker's registry row still says it lives
        self.in_doubt_delay: float = 3600.0
        self.lost_after: float = 60.0

    # -- claims ---------------------------------------------------------------------------------
    def claim(self, key: str, recipient: str, template: str, lease: float) -> int:
        """Take the key for this process and return how often it was taken, or raise: Skipped if
        it already ended, Deferred if a live worker holds it (its lease is renewed while it
        works) or if it is in doubt and its hold has not passed."""
        taken = self.claim_many([(key, recipient, template)], lease)[0]
        if isinstance(taken, Exception):
            raise taken
        return taken

    def claim_many(self, items: Sequence[tuple[str, str, str]], lease: float) -> list[int | Outcome]:
        """``claim`` for a batch of ``(key, recipient, template)`` in one transaction: for each,
        how often it was taken, or the Skipped/Deferred that says why not."""
        try:
            return self._claim_batch(items, lease)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - one job's data failed the batch's statement
            if len(items) == 1:
                return [Poison(f"the store refused this job's claim: {storable_text(f'{type(exc).__name__}: {exc}')}")]
        # each job on its own, so the one the store refuses is buried alone and the others go on
        return [taken for item in items for taken in self.claim_many([item], lease)]

    def _claim_batch(self, items: Sequence[tuple[str, str, str]], lease: float) -> list[int | Outcome]:
        now = time.time()
        out: list[int | Outcome] = []
        with self.db.transaction():
            # the common case in one batched statement: a new key, or one nobody holds
            taken = self.db.execute_returning_many(
                _CLAIM, [(key, recipient, template, self.me, now + lease, now) for key, recipient, template in items])
            for (key, _, _), row in zip(items, taken):
                if row is not None:
                    out.append(int(row[0]))
                    continue
                try:
                    out.append(self._claim_contested(key, now, lease))
                except (Skipped, Deferred) as exc:
                    out.append(exc)
        return out

    def _claim_contested(self, key: str, now: float, lease: float) -> int:
        """Why the key was not free: ended, held, in doubt, or held by a process that died."""
        db = self.db
        row = db.execute("SELECT outcome, claimed_by, claim_expires, attempts FROM deliveries"
                         " WHERE key = ?" + db.dialect.for_update, (key,)).fetchone()
        if row is None:
            raise Wait("claim raced with a removal; retrying", RetryPolicy.busy)
        outcome, holder, expires, attempts = row
        if outcome in FINAL:
            raise Skipped(f"duplicate: key already {outcome}")
        if outcome == "in_doubt" and expires > now:
            raise Wait("in doubt: an earlier send got no final reply; held until its retry", expires - now)
        if outcome == "claimed" and holder != self.me:
            if self.journal.is_dead(holder):
                self.workers.mark_dead(process_of(holder))
            else:
                if expires > now:
                    raise Wait(f"duplicate: key claimed by {holder}", expires - now)
                if self.workers.lives(process_of(holder), now, self.lost_after):
                    # its lease ran out while it lives: it sent and could not record it yet (a
                    # store outage), or it stalls; it records it, or is found lost, before anyone sends
                    raise Wait(f"duplicate: key claimed by {holder}, a live worker whose record of it is pending",
                               self.lost_after / 4)
            # taken over from a dead holder, or one silent past its lease and lost: its journal,
            # where this host can read it, says how far it got
            sent, ending = self.journal.read(holder)
            if key in sent:  # it went; its worker never recorded it
                db.execute(_JOURNALED_SENT, (_JOURNALED, now, key, holder))
                raise Skipped(f"duplicate: key already sent ({_JOURNALED})")
            if key in ending:  # its end of data went, the reply did not come back: maybe delivered
                db.execute(_JOURNALED_IN_DOUBT, (_JOURNALED_DOUBT, now + self.in_doubt_delay, now, key, holder))
                raise Wait(_JOURNALED_DOUBT, self.in_doubt_delay)
        taken = db.execute(
            "UPDATE deliveries SET outcome = 'claimed', attempts = attempts + 1, claimed_by = ?,"
            " claim_expires = ?, updated_at = ? WHERE key = ? AND outcome = ? AND claimed_by = ?",
            (self.me, now + lease, now, key, outcome, holder),
        ).rowcount
        if not taken:
            raise Wait("duplicate: key claimed by another worker meanwhile", RetryPolicy.busy)
        return int(attempts) + 1

    def renew(self, key: str, lease: float) -> bool:
        """Extend this process's claim on ``key`` (called through a long send); False if the
        claim is no longer ours."""
        return self.renew_many([key], lease) > 0

    def renew_many(self, keys: Sequence[str], lease: float) -> int:
        """``renew`` for several keys in one statement; how many claims were still ours."""
        return len(self.confirm_many(keys, lease))

    def confirm_many(self, keys: Iterable[str], lease: float) -> set[str]:
        """Renew this process's claims on ``keys``; the keys whose claim was still its own. The
        holder id is the fencing token: a claim another worker took over (or that ended) is not
        renewed, and its key is not in the answer."""
        now, mine = time.time(), set()
        for part in chunks(sorted(set(keys))):
            mine |= {r[0] for r in self.db.all(f"UPDATE deliveries SET claim_expires = ?, updated_at = ?"
                                               f" WHERE key IN ({', '.join('?' * len(part))}) AND outcome = 'claimed'"
                                               f" AND claimed_by = ? RETURNING key", (now + lease, now, *part, self.me))}
        return mine

    # -- how jobs ended -------------------------------------------------------------------------
    def finish(self, key: str, recipient: str, template: str, outcome: str, reason: str = "",
               reply: str = "", *, overwrite_final: bool = True, hold: float = 0.0, free: bool = False) -> None:
        """Record how a job ended; any outcome releases the claim. Without ``overwrite_final``
        (the job never held the claim) a row that ended or is claimed is left alone. ``hold``
        keeps other copies of the key away that long (in doubt); ``free`` counts a release that
        costs no retry."""
        self.finish_many([Finish(key, recipient, template, outcome, reason, reply, overwrite_final, hold, free)])

    def finish_many(self, rows: Sequence[Finish]) -> None:
        """``finish`` for a batch, in one transaction; the journal of what was sent is emptied
        once it is committed."""
        if not rows:
            return
        try:
            self._finish_batch(rows)
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - one row's data failed the batch: each row alone
            if len(rows) == 1:
                get_logger().error("delivery not recorded: the store refused the row", key=storable_text(rows[0].key),
                                   outcome=rows[0].outcome, error=storable_text(f"{type(exc).__name__}: {exc}"))
            else:
                for f in rows:
                    self.finish_many([f])
        self.journal.recorded(f.key for f in rows)

    @staticmethod
    def _finish_args(f: Finish, now: float) -> list[Any]:
        return [f.key, f.recipient, f.template, f.outcome, storable_text(f.reason), storable_text(f.reply),
                now + f.hold if f.hold else 0, int(f.free), now]

    def _finish_batch(self, rows: Sequence[Finish]) -> None:
        now = time.time()
        statements = ((_FINISH if f.overwrite_final else _FINISH_UNCLAIMED, self._finish_args(f, now)) for f in rows)
        with self.db.transaction():
            for sql, batch in _runs(statements):
                self.db.execute_many(sql, batch)

    def replay_many(self, rows: Sequence[Finish]) -> None:
        """Outcomes this worker could not record during an outage, recorded now (one
        transaction): what it sent is recorded sent unless the key ended meanwhile; any other
        outcome only while the claim is still this worker's (a key another worker took over
        since is that worker's to record)."""
        if not rows:
            return
        now = time.time()
        statements = ((_REPLAY_SENT, self._finish_args(f, now)) if f.outcome == "sent"
                      else (_REPLAY_MINE, [*self._finish_args(f, now), self.me]) for f in rows)
        with self.db.transaction():
            for sql, batch in _runs(statements):
                self.db.execute_many(sql, batch)
        self.journal.recorded(f.key for f in rows)

    def add_free_releases(self, rows: Sequence[tuple[str, str, str, int]]) -> None:
        """Releases an outage caused, ``(key, recipient, template, count)``: they cost no retry.
        A key with no row yet gets a ``deferred`` one to hold the count."""
        if not rows:
            return
        now = time.time()
        with self.db.transaction():
            self.db.execute_many(
                "INSERT INTO deliveries (key, recipient, template, outcome, free_releases, updated_at)"
                " VALUES (?, ?, ?, 'deferred', ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " free_releases = deliveries.free_releases + excluded.free_releases",
                [(key, recipient, template, n, now) for key, recipient, template, n in rows])

    def recover_journals(self) -> int:
        """Record what dead processes sent and never recorded (their journals, where this host
        sees them): sent, or in doubt for a lone ``?key``; release their other claims at once
        and remove those journals. How many keys were recorded."""
        recorded = 0
        db = self.db
        for holder in self.journal.others():
            if not self.journal.is_dead(holder):
                continue
            sent, ending = self.journal.read(holder)
            now = time.time()
            with db.transaction():
                for key in sorted(sent):
                    recorded += db.execute(_JOURNALED_SENT, (_JOURNALED, now, key, holder)).rowcount
                for key in sorted(ending):  # maybe delivered: held back for the in-doubt delay
                    recorded += db.execute(_JOURNALED_IN_DOUBT, (_JOURNALED_DOUBT, now + self.in_doubt_delay,
                                                                 now, key, holder)).rowcount
                # what else it held never reached its end of data: free for the next worker now
                db.execute("UPDATE deliveries SET claim_expires = 0 WHERE outcome = 'claimed'"
                           " AND claimed_by = ?", (holder,))
                self.workers.mark_dead(process_of(holder))
            self.journal.remove(holder)
        return recorded

    def release_claims_of(self, process: str) -> int:
        """Free at once the keys a lost process holds: its claims are ``<process id>:n``,
        compared exactly up to the last colon, never with LIKE (whose ``_`` would match
        ``mail-1`` for ``mail_1``). How many were released."""
        prefix = f"{process}:"
        return self.db.run("UPDATE deliveries SET claim_expires = 0 WHERE outcome = 'claimed'"
                           " AND substr(claimed_by, 1, ?) = ?", (len(prefix), prefix))

    # -- what other owners change on a delivery row ---------------------------------------------
    def note_bounce(self, key: str, reason: str, reply: str) -> bool:
        """A bounce that came back after the message was accepted, on the delivery's own row."""
        return self.db.run("UPDATE deliveries SET outcome = 'bounced', reason = ?, reply = ?, updated_at = ?"
                           " WHERE key = ? AND outcome IN ('sent', 'in_doubt', 'bounced')",
                           (reason, reply, time.time(), key)) > 0

    def note_reason(self, key: str, reason: str) -> None:
        """A later word on a delivery (a complaint) that leaves its outcome as it is."""
        self.db.run("UPDATE deliveries SET reason = ?, updated_at = ? WHERE key = ?", (reason, time.time(), key))

    def outcome_for_update(self, key: str) -> str | None:
        """Within a transaction: the key's outcome (None: no row), its row locked until the end."""
        row = self.db.execute("SELECT outcome FROM deliveries WHERE key = ?" + self.db.dialect.for_update,
                              (key,)).fetchone()
        return None if row is None else str(row[0])

    def skip(self, key: str, recipient: str, template: str, reason: str) -> None:
        """Record the key as done without a send (``skipped``, with ``reason``), releasing any claim."""
        self.db.run("INSERT INTO deliveries (key, recipient, template, outcome, reason, updated_at)"
                    " VALUES (?, ?, ?, 'skipped', ?, ?) ON CONFLICT (key) DO UPDATE SET outcome = 'skipped',"
                    " reason = excluded.reason, claimed_by = '', claim_expires = 0,"
                    " updated_at = excluded.updated_at",
                    (key, recipient, template, reason, time.time()))

    # -- the delivery log, read back ------------------------------------------------------------
    def free_releases(self, key: str) -> int:
        """Releases of this key that named their own delay: they do not count as attempts."""
        row = self.db.one("SELECT free_releases FROM deliveries WHERE key = ?", (key,))
        return int(row[0]) if row else 0

    def deliveries(self, *, key: str | None = None, recipient: str | None = None,
                   limit: int = 100) -> list[Delivery]:
        where, args = "1 = 1", []
        if key is not None:
            where, args = "key = ?", [key]
        elif recipient is not None:
            where, args = "recipient = ?", [recipient.lower()]
        rows = self.db.all(
            f"SELECT key, recipient, template, outcome, reason, reply, attempts, updated_at"
            f" FROM deliveries WHERE {where} ORDER BY updated_at DESC LIMIT ?", (*args, limit)
        )
        return [Delivery(*row) for row in rows]

    def outcome_counts(self) -> dict[str, int]:
        return dict(self.db.all("SELECT outcome, count(*) FROM deliveries GROUP BY outcome"))
