"""The delivery store as one object: ``Store`` composes the owners in worker/storage/ over one
database connection, for the callers that hold a single store.

``BEANMAIL_STORE`` is an SQLite file (WAL, so a pool of processes on one host shares it) or a
``postgresql://`` DSN for a fleet of worker hosts. Each concern has its owner, with its tables,
migrations and statements: ``store.ledger`` (claims, how jobs ended, the delivery log),
``store.blobs``, ``store.mx``, ``store.rates``, ``store.suppression``, ``store.burials``,
``store.console``, ``store.feedback``, ``store.events``, ``store.workers``; digest records are
``worker.storage.digests.DigestRecords(store)``. The methods below are those owners' own, bound
here under the names callers have always used; new code may call the owner directly.
"""

from __future__ import annotations

from typing import Any, Sequence

from .journal import Journal
from .storage.blobs import Blobs
from .storage.burials import Burials
from .storage.console import LATENCY_BUCKETS, ConsoleFigures
from .storage.database import Database
from .storage.errors import StoreCorrupt, StoreUnavailable
from .storage.events import EventRecords
from .storage.feedback import FeedbackRecords
from .storage.ledger import FINAL, Delivery, Finish, Ledger, worker_id
from .storage.mx_slots import MxSlots
from .storage.rate_slots import RateSlots
from .storage.relays import RelayStates
from .storage.schema import MIGRATIONS
from .storage.suppression import Suppression
from .storage.values import KEY_LIMIT, chunks, storable_text, unstorable
from .storage.workers import Workers

__all__ = ["FINAL", "KEY_LIMIT", "LATENCY_BUCKETS", "MIGRATIONS", "Delivery", "Finish", "Store", "StoreCorrupt",
           "StoreUnavailable", "chunks", "storable_text", "unstorable", "worker_id"]


class Store:
    def __init__(self, location: str, timeout: float = 30.0) -> None:
        """``timeout``: how long a write waits for another process's lock before the job is
        deferred. Raises StoreUnavailable (cannot reach or create it) or StoreCorrupt."""
        self.location = location
        self.db = Database(location, timeout, MIGRATIONS)
        me = worker_id()
        self.journal = Journal(location, me)  # keys sent, not yet recorded (worker/journal.py)
        self.workers = Workers(self.db)
        self.ledger = Ledger(self.db, self.workers, self.journal, me)
        self.blobs = Blobs(self.db)
        self.mx = MxSlots(self.db)
        self.rates = RateSlots(self.db)
        self.suppression = Suppression(self.db)
        self.burials = Burials(self.db)
        self.console = ConsoleFigures(self.db)
        self.feedback = FeedbackRecords(self.db, self.ledger)
        self.events = EventRecords(self.db)
        self.relays = RelayStates(self.db)
        self._bind()

    def _bind(self) -> None:
        """The owners' methods under the store's names (bound methods: no wrapper per call)."""
        ledger, feedback = self.ledger, self.feedback
        self.claim, self.claim_many, self.renew, self.renew_many = (
            ledger.claim, ledger.claim_many, ledger.renew, ledger.renew_many)
        self.confirm_many, self.finish, self.finish_many, self.replay_many = (
            ledger.confirm_many, ledger.finish, ledger.finish_many, ledger.replay_many)
        self.add_free_releases, self.recover_journals, self.free_releases = (
            ledger.add_free_releases, ledger.recover_journals, ledger.free_releases)
        self.deliveries, self.outcome_counts, self.note_bounce = (
            ledger.deliveries, ledger.outcome_counts, ledger.note_bounce)
        self.blob, self.delete_blob, self.identity = self.blobs.blob, self.blobs.delete_blob, self.blobs.identity
        self.put_blob = self.blobs.put_blob
        self.take_mx_slot, self.drop_mx_slot = self.mx.take_mx_slot, self.mx.drop_mx_slot
        self.take_slot = self.rates.take_slot
        s = self.suppression
        self.suppressed, self.suppressed_many, self.suppress, self.unsuppress = (
            s.suppressed, s.suppressed_many, s.suppress, s.unsuppress)
        self.suppression_list, self.suppression_counts, self.suppression_search = (
            s.suppression_list, s.suppression_counts, s.suppression_search)
        b = self.burials
        self.record_failure, self.failure, self.failed_job_ids = b.record_failure, b.failure, b.failed_job_ids
        self.failures_of, self.failures_mentioning = b.failures_of, b.failures_mentioning
        c = self.console
        self.add_console_counts, self.console_rates, self.console_totals = (
            c.add_console_counts, c.console_rates, c.console_totals)
        self.console_latency, self.console_latency_by_minute, self.domain_figures = (
            c.console_latency, c.console_latency_by_minute, c.domain_figures)
        self.remember_message, self.message_for_token, self.record_bounce = (
            feedback.remember_message, feedback.message_for_token, feedback.record_bounce)
        self.bounces, self.bounce_raw, self.soft_bounces, self.note_complaint = (
            feedback.bounces, feedback.bounce_raw, feedback.soft_bounces, feedback.note_complaint)
        self.first_webhook_event, self.webhook_event_seen = feedback.first_webhook_event, feedback.webhook_event_seen
        self.bulk_feedback, self.brake, self.set_brake = feedback.bulk_feedback, feedback.brake, feedback.set_brake
        e = self.events
        self.remember_refs, self.refs_for, self.remember_reply, self.reply_for = (
            e.remember_refs, e.refs_for, e.remember_reply, e.reply_for)
        self.record_inbound, self.inbound = e.record_inbound, e.inbound

    # the claim's fencing token and the ledger's two delays live on the ledger; set here as before
    @property
    def me(self) -> str:
        return self.ledger.me

    @me.setter
    def me(self, value: str) -> None:
        self.ledger.me = value

    @property
    def in_doubt_delay(self) -> float:
        return self.ledger.in_doubt_delay

    @in_doubt_delay.setter
    def in_doubt_delay(self, value: float) -> None:
        self.ledger.in_doubt_delay = value

    @property
    def lost_after(self) -> float:
        return self.ledger.lost_after

    @lost_after.setter
    def lost_after(self, value: float) -> None:
        self.ledger.lost_after = value

    # -- the database, for callers that still pass their own SQL (web/figures.py, web/actions.py) -
    def schema(self) -> set[int]:
        return self.db.schema()

    def check(self) -> None:
        """Notice a store file deleted (restored from the open handle) or replaced (reopened)
        without a statement: a worker asks between batches, so an idle worker restores it too."""
        self.db.check()

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.one(sql, args)

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self.db.all(sql, args)

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One write with the store's outage handling; the number of rows it changed."""
        return self.db.run(sql, args)

    _one = one  # (tests/test_digest.py counts rows through it)

    def all_in(self, sql: str, values: Any) -> list[Any]:
        return self.db.all_in(sql, values)

    def close(self) -> None:
        self.journal.close()
        self.db.close()
