"""The sending stage: one job body in, one Disposition out. Stages raise Outcomes; this module
records what happened in the store and lets ``outcomes.disposition`` decide the job's fate."""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable, Mapping, Sequence

from producer.envelope import PRIORITIES, Envelope

from . import logs, mime
from .entities import Registry
from .events import hooks as events
from .checks import BatchFacts, standard_checks
from .compose import Composer
from .decode import Decoder
from .delivery import Delivery, Result, Transport, job_event, make_transport
from .job import Reserved
from .logs import get_logger, mask_text
from .outcomes import (Action, Bounced, Disposition, Fate, InDoubt, Outage, Outcome, Poison, RetryPolicy, Skipped,
                       Wait, Withheld, disposition)
from .render import Renderer
from .settings import Settings
from .store import Finish, Store, StoreUnavailable
from .transports.smtp import Reply
from .digest.collect import Digests
from .feedback.outbound import Outbound
from .web.subjects import header_subject
from .web.tally import tally_for


class Pipeline:
    def __init__(self, settings: Settings, store: Store, transport: Transport | None = None,
                 registry: Registry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.transport = transport or make_transport(settings)
        self.registry = registry or Registry.from_settings(settings.entities)
        self.renderer = Renderer(settings.templates)
        self.digests = Digests(settings, store, self.registry)  # collected, or held for quiet hours
        self.outbound = Outbound(settings, store)  # Feedback-ID, VERP, DKIM, the bulk brake
        self.sender = mime.sender_address(settings.from_addr)
        self.backoff = RetryPolicy.from_settings(settings)
        self.tally = tally_for(store.location)  # the console's counts, written every few seconds
        self._holding: dict[str, Delivery] = {}  # keys claimed and not yet concluded
        self._confirmed: dict[str, float] = {}  # key -> when (monotonic) its claim was last known ours
        self._unrecorded: list[Finish] = []  # outcomes the store could not take (an outage): recorded first
        self._owed: dict[str, tuple[str, str, int]] = {}  # outage releases of unclaimed keys, to give back
        self._gated = "before_end" in inspect.signature(self.transport.send).parameters
        # relays by priority (worker/relays): bulk paced and held per relay; none for direct MX
        self.relays = getattr(self.transport, "book", None) if settings.transport == "smtp" else None
        self.checks = standard_checks(settings, store, self.digests, self.outbound, self.relays)
        self.decoder = Decoder(settings, store)
        self.composer = Composer(settings, store, self.sender, self.registry, self.renderer, self.digests,
                                 self.outbound)
        store.in_doubt_delay, store.lost_after = settings.in_doubt_delay, settings.lost_after

    # -- the loop's BatchStage contract (worker/job.py) ------------------------------------------
    capacity: int | None = None  # each batch finished before the next
    in_flight = 0

    def submit(self, jobs: Sequence[Reserved]) -> list[tuple[Reserved, Disposition]]:
        return list(zip(jobs, self.handle_batch(jobs)))

    def collect(self, wait: float) -> list[tuple[Reserved, Disposition]]:
        return []

    def handle(self, job: Reserved) -> Disposition:
        return self.handle_batch([job])[0]

    def handle_batch(self, jobs: Sequence[Reserved]) -> list[Disposition]:
        """A batch reserved in one round trip: checked, claimed in one store transaction, sent in
        turn (every job of the batch kept reserved and claimed while one send runs long), and
        recorded in one transaction."""
        batch = self.begin(jobs)
        keys = [d.envelope.id for d in batch if d.claimed and d.envelope is not None]
        began = time.monotonic()

        def keep_all() -> None:  # renew the reservations and claims of the whole batch
            if time.monotonic() - began >= 1:  # nothing is due sooner; each touch says when it is
                for d in batch:
                    d.touch()
        keeper = self.keeper(lambda: keys, keep_all)
        for transport, ready in self._routes([d for d in batch if d.ready]):
            send_many = getattr(transport, "send_many", None)
            if send_many is not None and len(ready) > 1:  # the relay session pipelines the batch
                def done(i: int, outcome: Reply | Exception, ready: list[Delivery] = ready) -> None:
                    d = ready[i]
                    if isinstance(outcome, Exception):
                        d.error = outcome
                    else:
                        d.reply = str(outcome)
                    self.sent(d)
                try:
                    send_many([(d.sender, d.recipients, d.message) for d in ready], keeper, done,
                              lambda i, ready=ready: self.gate(ready[i])())
                except Exception as exc:  # noqa: BLE001 - a bug: what has no outcome yet is poison
                    for d in ready:
                        if d.message:
                            d.error = exc
                            d.message = b""
            else:
                for d in ready:
                    self.send(d, keeper, transport)
        return self.end(batch)

    def _routes(self, ready: list[Delivery]) -> list[tuple[Any, list[Delivery]]]:
        """The deliveries by the transport of their priority (a relay transport routes each
        priority to its own relays), in the batch's order of first appearance."""
        route = getattr(self.transport, "route", None)
        if route is None:
            return [(self.transport, ready)] if ready else []
        groups: dict[str, list[Delivery]] = {}
        for d in ready:
            groups.setdefault(d.envelope.priority if d.envelope is not None else "normal", []).append(d)
        return [(route(priority), part) for priority, part in groups.items()]

    def begin(self, jobs: Sequence[Reserved]) -> list[Delivery]:
        """A batch of reserved jobs, decoded, checked, claimed and built (``prepare``)."""
        return self.prepare([Delivery(j.body, lambda j=j: j.attempt, j.touch, job=j, started=time.monotonic())
                             for j in jobs])

    def prepare(self, batch: list[Delivery]) -> list[Delivery]:
        """Decode and check (the batch's suppressions and preferences read in one query each),
        claim (one transaction) and build."""
        for d in batch:
            self.decode(d)
        try:
            self.record_pending()  # what this worker sent and could not record goes first
        except StoreUnavailable as exc:
            for d in batch:
                d.error = d.error or exc
            return batch
        addresses = [r.address for d in batch if d.error is None and d.envelope is not None for r in d.envelope.to]
        try:
            suppressed = self.store.suppressed_many(addresses)
            prefs = self.digests.records.preferences_many(addresses)
        except StoreUnavailable as exc:
            for d in batch:
                d.error = d.error or exc
            suppressed, prefs = {}, {}
        for d in batch:
            self.check(d, suppressed, prefs)
        self.claim(batch)
        for d in batch:
            if d.error is None and d.claimed:
                self.build(d)
        return batch

    def end(self, batch: Sequence[Delivery]) -> list[Disposition]:
        """Record a batch's outcomes (one transaction), log and count each; their dispositions."""
        results = self.conclude(batch)
        lines = []
        for d, result in zip(batch, results):
            try:
                lines.append(self._report(d, result))
            except Exception as exc:  # noqa: BLE001 - beanstalkd gone for the job's stats: log what is known
                lines.append(("warning", {"job": d.job.id if d.job else None, "outcome": result.disposition.outcome,
                                          "action": result.disposition.action, "stats": f"unavailable: {exc}"}))
        try:
            logs.events("job", lines)
        except UnicodeError:  # a job's text its output cannot encode (a lone surrogate): escaped, never lost
            logs.events("job", [(level, _escaped(fields)) for level, fields in lines])
        return [r.disposition for r in results]

    def _report(self, d: Delivery, result: Result) -> tuple[str, dict[str, object]]:
        """Count a job's outcome for the console; its log line's level and fields."""
        job = d.job
        assert job is not None
        disp = result.disposition
        if disp.action is Action.DELETE and result.envelope is not None:
            # no round trip for stats on success: the tube its priority names, the store's count
            tube, attempt = PRIORITIES[result.envelope.priority][0], result.attempt
        else:
            tube, attempt = job.tube, job.attempt  # the loop needs the stats now anyway
        envelope = result.envelope
        created = envelope.created_at if envelope is not None else 0
        domain = envelope.to[0].address.rpartition("@")[2].lower() if envelope is not None and envelope.to else None
        self.tally.record(tube, disp.outcome, time.time() - created if created and disp.outcome == "sent" else None, domain,
                          subject=(envelope.id, d.subject) if envelope is not None and d.subject else None)
        return job_event(result, job_id=job.id, tube=tube, attempt=attempt, started=d.started,
                         mask_addresses=self.settings.mask_addresses)

    def reload(self) -> None:
        self.renderer = self.composer.renderer = Renderer(self.settings.templates)

    def close(self) -> None:
        self.transport.close()
        self.tally.flush(self.store)

    def run(self, body: bytes, attempt: int | Callable[[], int], touch: Callable[[], object] = lambda: None) -> Result:
        """One job body through every step (what ``handle_batch`` does for a batch)."""
        [d] = self.prepare([Delivery(body, attempt, touch)])
        if d.ready:
            self.send(d, self.keeper(lambda: [d.envelope.id] if d.envelope else [], touch))
        return self.conclude([d])[0]

    # -- the steps ------------------------------------------------------------------------------
    def decode(self, d: Delivery) -> Delivery:
        """The envelope, dereferenced and checked on its own (worker/decode.py)."""
        try:
            d.envelope = self.decoder.decode(d.body)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes
            d.error = exc
        finally:  # as far as it got: the log and the record name the job even when a check refused it
            d.envelope, d.ref = self.decoder.last_envelope, self.decoder.last_ref
        return d

    def check(self, d: Delivery, suppressed: Mapping[str, tuple[str, str]], prefs: Mapping[str, Any]) -> Delivery:
        """Everything else that needs no claim; ``suppressed`` and ``prefs`` are the batch's,
        read in one query each."""
        if d.error is not None or d.envelope is None:
            return d
        try:  # the admission steps (worker/checks.py): suppression, digest, rate, brake, relays, ...
            d.envelope = self.checks.run(d.envelope, BatchFacts(suppressed, prefs))
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes
            d.error = exc
        return d

    def claim(self, batch: Sequence[Delivery]) -> None:
        """Claim the checked deliveries' keys in one store transaction. A copy of a key this
        process has in hand claims nothing: it follows that delivery and ends as it does."""
        todo = []
        for d in batch:
            if d.error is not None or d.envelope is None:
                continue
            key = d.envelope.id
            if key in self._holding:  # a second copy of a key this process has in hand
                d.claiming = True  # its row is the first copy's to write
                d.leader = self._holding[key]
                continue
            if key in self.store.journal.pending:  # sent by us; its record failed (an outage)
                d.claiming = d.claimed = d.already_sent = True
                d.error = Skipped("duplicate: key already sent by this worker (recorded now)")
                self._holding[key] = d
                continue
            self._holding[key] = d
            d.claiming = True
            todo.append(d)
        if not todo:
            return
        asked = time.monotonic()
        try:
            taken = self.store.claim_many([(d.envelope.id, self._recipient(d.envelope), d.envelope.template)
                                           for d in todo], lease=self.settings.ttr)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the store's outage defers the whole batch
            taken = [exc] * len(todo)
        for d, t in zip(todo, taken):
            if isinstance(t, BaseException):
                d.error = t
                self._holding.pop(d.envelope.id, None)  # type: ignore[union-attr]
            else:
                d.claimed, d.claims = True, t
                self._confirmed[d.envelope.id] = asked  # type: ignore[union-attr]

    def gate(self, d: Delivery, may_ask_store: bool = True) -> Callable[[], None]:
        """What runs just before a message's end of data goes (the transports call it after the
        354): the claim must still be this worker's (a worker that stalled past its lease and
        lost the key to another sends nothing), and the journal takes its ``?key`` line (a kill
        from here on leaves the key in doubt, never sent again at once). Raises Withheld."""
        def before_end() -> None:
            assert d.envelope is not None
            key, lease = d.envelope.id, self.settings.ttr
            age = time.monotonic() - self._confirmed.get(key, -math.inf)
            if age > lease / 3:  # a stall, or a long session, since the claim was last known ours
                if not may_ask_store:  # the event loop's thread: the loop's keeper renews claims
                    if age > lease * 2 / 3:
                        raise Withheld(f"claim not renewed for {age:.1f}s: the key may be another worker's now")
                else:
                    asked = time.monotonic()
                    try:
                        mine = key in self.store.confirm_many([key], lease)
                    except StoreUnavailable as exc:
                        if age > lease * 2 / 3:
                            raise Withheld(f"claim not confirmed ({exc.reason})", delay=self.backoff.unconfirmed) from None
                        mine = True  # its lease still runs
                    else:
                        if mine:
                            self._confirmed[key] = asked
                    if not mine:
                        raise Withheld("claim lost: another worker took the key over while this one stalled")
            try:
                self.store.journal.ending(key)
            except Exception as exc:  # noqa: BLE001 - OSError, JournalUnwritable: the send must not happen
                raise Withheld(f"journal cannot record the send: {exc}", delay=self.backoff.journal_down) from None
        return before_end

    def record_pending(self) -> None:
        """Record what this worker could not record during a store outage (what it sent first:
        other workers hold those keys back meanwhile), and give back the outage's releases.
        Raises StoreUnavailable while the store is still away."""
        if self._unrecorded:
            rows, self._unrecorded = self._unrecorded, []
            try:
                self.store.replay_many(rows)
            except StoreUnavailable:
                self._unrecorded = rows + self._unrecorded
                raise
            get_logger().warning("recorded what the store could not take during its outage", outcomes=len(rows))
        if self._owed:
            owed, self._owed = self._owed, {}
            try:
                self.store.add_free_releases([(k, r, t, n) for k, (r, t, n) in owed.items()])
            except StoreUnavailable:
                for k, (r, t, n) in owed.items():
                    self._owe(k, r, t, n)
                raise

    def _owe(self, key: str, recipient: str, template: str, n: int = 1) -> None:
        _, _, had = self._owed.get(key, ("", "", 0))
        self._owed[key] = (recipient, template, had + n)

    def build(self, d: Delivery) -> None:
        """Render and sign the message of a claimed delivery."""
        assert d.envelope is not None
        try:
            message, d.recipients = self.composer.compose(d.envelope)
            sender = d.envelope.sender or self.sender.addr_spec  # a raw job may name its own
            d.sender, d.message = self.outbound.prepare(d.envelope, message, sender)
            d.subject = header_subject(d.message)
        except Exception as exc:  # noqa: BLE001
            d.error = exc

    def send(self, d: Delivery, keep: Callable[[], None], transport: Any = None) -> None:
        if transport is None:
            [(transport, _)] = self._routes([d])
        try:
            if self._gated:
                d.reply = str(transport.send(d.sender, d.recipients, d.message, keep, before_end=self.gate(d)))
            else:  # a transport that cannot say when its end of data goes: the gate before it all
                self.gate(d)()
                d.reply = str(transport.send(d.sender, d.recipients, d.message, keep))
        except Exception as exc:  # noqa: BLE001
            d.error = exc
        self.sent(d)

    def sent(self, d: Delivery, journal: bool = True) -> None:
        """A send ended: a message the server took goes into the journal until its batch is
        recorded (a kill before that does not send it again). ``journal=False``: the caller
        journaled it already, at the reply."""
        d.message = b""  # sent or not, its bytes are not needed again
        if isinstance(d.error, Withheld):
            d.claimed = False  # not ours (or not sent): its row is not this delivery's to write
        if journal and d.error is None and d.envelope is not None:
            self.store.journal.sent(d.envelope.id)
        elif d.envelope is not None and d.error is not None and not isinstance(d.error, InDoubt):
            self.store.journal.settled(d.envelope.id)  # refused or never ended: not in doubt

    def conclude(self, batch: Sequence[Delivery]) -> list[Result]:
        """Each delivery's disposition, recorded in the store in one transaction. A copy that
        followed another delivery of its key ends as that one did: skipped once it went (or
        ended for good), released with its delay otherwise."""
        results: dict[int, Result] = {}
        finishes: list[Finish] = []
        for d in sorted(batch, key=lambda d: d.leader is not None):  # the copies after what they follow
            error = d.error
            if d.leader is not None and error is None:
                error = d.error = self._follow(d.leader, results.get(id(d.leader)))
            if d.reply == "" and error is not None:
                d.reply = getattr(error, "reply", "")
            envelope = d.envelope
            attempt = self._attempt(envelope.id if envelope is not None else "", d.attempt)
            result = disposition(error, attempt, self.backoff)
            if envelope is not None and isinstance(error, Outage) and not d.claimed:
                # nothing to record but that this release costs no retry (given back once the store is back)
                self._owe(envelope.id, self._recipient(envelope), envelope.template)
            elif envelope is not None and (d.claimed or not d.claiming):
                # before the claim nothing may overwrite another delivery's row of the same key
                hold = self.backoff.in_doubt_delay if result.outcome is Fate.IN_DOUBT else 0.0
                finishes.append(Finish(envelope.id, self._recipient(envelope), envelope.template,
                                       Fate.SENT if d.already_sent else result.outcome, result.reason, d.reply,
                                       d.claimed, hold, result.free))
            results[id(d)] = Result(result, envelope, d.reply, d.claims)
            if envelope is not None and d.leader is None and self._holding.get(envelope.id) is d:
                del self._holding[envelope.id]
                self._confirmed.pop(envelope.id, None)
        ordered = [results[id(d)] for d in batch]
        try:
            self.store.finish_many(finishes)
            for d, result in zip(batch, ordered):
                try:
                    self._after(d, result)
                except StoreUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - one job's follow-up never costs the batch
                    get_logger().exception("follow-up of a job failed", outcome=result.disposition.outcome,
                                           error=repr(exc))
        except StoreUnavailable as exc:
            # what happened stands (the mail went, or not); only its record is missing: it is
            # recorded before this worker takes new work, and meanwhile no other worker sends
            # the keys it holds. An outage the job already met is logged once by the store.
            self._unrecorded += [f for f in finishes if f.overwrite_final]
            for d, result in zip(batch, ordered):
                if d.envelope is not None and not isinstance(d.error, StoreUnavailable):
                    key = d.envelope.id
                    get_logger().error("delivery not recorded yet", outcome=result.disposition.outcome,
                                       error=exc.reason,
                                       key=mask_text(key) if self.settings.mask_addresses else key)
        events.deliveries(self.settings, self.store, batch, ordered)  # message.sent/.bounced (worker/events)
        return ordered

    def _follow(self, leader: Delivery, ended: Result | None) -> Outcome:
        """How a copy of a key in hand ends: as its leader did, when that ended in this batch."""
        if ended is None:  # the leader is still on its way (sends in flight): come back with its lease
            return Wait("duplicate: key in hand in this worker", self.settings.ttr / 3)
        d = ended.disposition
        if d.action is Action.DELETE:
            return Skipped(f"duplicate: a copy of this key ended {d.outcome} in this worker")
        return Wait(f"duplicate: a copy of this key was {d.outcome} in this worker", d.delay)

    def _after(self, d: Delivery, result: Result) -> None:
        """What follows a recorded outcome: a hard bounce's suppression, the feedback brake's
        count, a blob no longer needed."""
        envelope, error = d.envelope, d.error
        if envelope is None:
            return
        if isinstance(error, Bounced) and error.hard and envelope.kind == "mail":
            self.store.suppress(envelope.recipient.address, error.reason, "bounce")
        self.outbound.finished(envelope, result.disposition.outcome)
        if d.ref and result.disposition.action is Action.DELETE:
            self.store.delete_blob(d.ref)  # a final outcome: the body is needed no more

    def _attempt(self, key: str, attempt: int | Callable[[], int]) -> int | Callable[[], int]:
        """beanstalkd counts every release; those that named their own delay (a rate-limit slot,
        a claim held elsewhere) were no failure and are given back. When beanstalkd or the store
        cannot say (gone meanwhile), the attempt counts as the first: a retry, never a burial,
        and never a batch left half recorded."""
        if not callable(attempt):
            return attempt

        def count() -> int:
            try:
                return self.backoff.less_waits(attempt(), self.store.free_releases(key))
            except Exception:  # noqa: BLE001 - OSError, NotFoundError, StoreUnavailable
                return 1
        return count

    def keeper(self, keys: Callable[[], Sequence[str]], touch: Callable[[], object]) -> Callable[[], None]:
        """What the transport calls through every long step (and the event loop's stage between
        collections): keeps beanstalkd's reservations and the store's claims of ``keys()``
        alive together, so a slow server never sees a second copy."""
        lease = self.settings.ttr
        renewed = time.monotonic()

        def keep() -> None:
            nonlocal renewed
            touch()  # beanstalkd's reservation: at a third of the job's own TTR
            if time.monotonic() - renewed >= max(1.0, lease / 3):  # the claims: at a third of their lease
                renewed = time.monotonic()
                try:
                    for key in self.store.confirm_many(keys(), lease):
                        self._confirmed[key] = renewed
                except StoreUnavailable:
                    pass  # the claim's lease still runs; the outage is logged by the store
        return keep

    @staticmethod
    def _recipient(envelope: Envelope) -> str:
        return ",".join(r.address.lower() for r in envelope.to)


def _escaped(value: Any) -> Any:
    """``value`` with every string made encodable (lone surrogates as backslash escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


__all__ = ["Pipeline"]
