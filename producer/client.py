"""Notifier: what a web application's hook calls. It pays for one beanstalkd ``put`` and nothing else."""

from __future__ import annotations

import base64
import hashlib
import inspect
import os
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from . import envelope as env
from . import spool
from .addresses import AddressError, check_address, check_name, parse_mailbox
from .beanstalk import connect, parse_url, split_urls  # noqa: F401 - connect, parse_url: importable from here
from .blobs import BlobError, BlobStore
from .blobs import where as blob_where
from .envelope import Envelope, Recipient
from .servers import Refused, ServerSet, Unanswered

if TYPE_CHECKING:
    from .prefs import PreferenceStore, Preferences
    from .schedule import Schedule

DEFAULT_URL = "beanstalk://127.0.0.1:11300"
DEFAULT_TTR = 120
# beanstalkd's default max-job-size is 65,535 bytes; chunks stay well under it.
CHUNK_BYTES = 48_000
# A body over this many bytes goes to the blob store and the job carries its reference: well
# under beanstalkd's default max-job-size (65,535), leaving room for a signature and headroom.
INLINE_LIMIT = 32_000
HOW_TO_STORE = ("store large messages by reference: configure a blob store (Notifier(blobs=...) or "
                "BEANMAIL_STORE; Django BEANMAIL['STORE']; Flask BEANMAIL_STORE), the worker's store location")


class EnqueueError(RuntimeError):
    """The job could not be handed to beanstalkd.

    ``job`` is ``(tube, priority, delay, ttr, body)`` when the body was built, so a caller that
    must not lose it (the after-commit hooks) can keep it in the spool."""

    job: tuple[str, int, int, int, bytes] | None = None


class Unreachable(EnqueueError):
    """beanstalkd did not answer (twice) or refuses jobs for now: a spool may take the job."""


class JobTooBig(EnqueueError):
    """beanstalkd refuses this job for good (larger than its max-job-size): retrying never helps,
    so a spool flush sets it aside in the rejects file instead of retrying it."""


class BlobUnavailable(EnqueueError):
    """A large job's body could not be written to the blob store: the job was not queued."""


def parse_recipient(value: str | Recipient | Mapping[str, Any] | tuple[str, str]) -> Recipient:
    """Accepts ``"Zoë <zoe@example.com>"``, ``("Zoë", "zoe@…")``, a mapping or a Recipient, checked
    by ``producer.addresses`` (the worker's own judgement): an address that is not exactly one
    valid address raises AddressError (a ValueError), never becomes another address."""
    if isinstance(value, str):
        mailbox = parse_mailbox(value)
        return Recipient(mailbox.address, mailbox.name)
    if isinstance(value, Recipient):
        return Recipient(check_address(value.address), check_name(value.name), value.context)
    if isinstance(value, Mapping):
        return Recipient(check_address(value["address"]), check_name(value.get("name", "")),
                         dict(value.get("context") or {}))
    if isinstance(value, tuple):
        name, address = value
        return Recipient(check_address(address), check_name(name))
    raise AddressError(value, f"a recipient is a string, a (name, address) pair, a mapping or a Recipient, "
                              f"not {type(value).__name__}")


class RecipientsRefused(AddressError):
    """Recipients of a mailout read from an iterator that were not valid addresses: they were
    left out and the others queued, in the chunk jobs ``ids``; ``refused`` has each one's error.
    Running the mailout again with the same key sends no one twice."""

    def __init__(self, refused: list[AddressError], ids: list[int]) -> None:
        shown = "; ".join(str(e) for e in refused[:3]) + (f"; and {len(refused) - 3} more" if len(refused) > 3 else "")
        reason = f"{len(refused)} recipient(s) refused and left out, the others queued in {len(ids)} chunk(s): {shown}"
        super().__init__([e.text for e in refused], reason)
        self.args = (f"Invalid address: {reason}",)
        self.refused, self.ids = refused, ids

    def __str__(self) -> str:
        return str(self.args[0])


def message_key(prefix: str, message_id: str, recipients: Sequence[str]) -> str | None:
    """The idempotency key of a built message: its Message-ID *and* its recipients, so copies of
    one message to different recipients (one per recipient, sharing the application's
    Message-ID) are separate deliveries, while the same message queued twice is sent once.
    None without a Message-ID (a random key)."""
    if not message_id:
        return None
    digest = hashlib.sha256("\n".join(a.lower() for a in recipients).encode()).hexdigest()[:16]
    key = f"{prefix}:{message_id.strip()}:{digest}"
    if len(key) > 200:  # the envelope's limit
        key = f"{prefix}:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


def check_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A Notifier call's addresses checked now, as the call itself checks them, for a call that
    is made later (after a commit: ``producer.hooks``, the Django and Flask integrations), so a
    bad address raises at ``notify()`` rather than after the commit, where it could only be
    logged. Returns the call with its addresses normalized. An iterator of recipients (a large
    mailout) is left to the call itself: it is read once."""
    bound = inspect.signature(getattr(Notifier, name)).bind(None, *args, **kwargs)
    a = bound.arguments
    if name == "notify":
        a["to"] = parse_recipient(a["to"])
    elif name == "send_raw":
        a["to"] = [check_address(r) for r in a["to"]]
        if a.get("sender"):
            a["sender"] = check_address(a["sender"])
    else:  # mailout, notify_watchers
        many = "recipients" if name == "mailout" else "watchers"
        if isinstance(a[many], (list, tuple)):
            a[many] = [parse_recipient(r) for r in a[many]]
        for other in ("exclude",):
            if isinstance(a.get(other), (list, tuple)):
                a[other] = [parse_recipient(r).address for r in a[other]]
        if a.get("actor") is not None:
            a["actor"] = parse_recipient(a["actor"]).address
    return bound.args[1:], bound.kwargs


class Notifier:
    """Thread-safe; one connection per beanstalkd server, reconnected (and the put retried once)
    if dropped. ``url`` may list several servers, comma-separated: jobs are spread over them by
    key and fail over to the next server when one does not answer."""

    def __init__(self, url: str | None = None, *, secret: str | None = None, ttr: int = DEFAULT_TTR,
                 timeout: float = 5.0, spool: str | None = None, blobs: str | None = None) -> None:
        """``secret``: signs every job; a comma-separated list (a rotation) signs with its first.
        ``spool``: a file to append jobs to when beanstalkd is unreachable (``beanmail spool
        flush`` and every worker start move them on); without one, an outage raises EnqueueError.
        ``blobs``: the store (the worker's ``BEANMAIL_STORE``: an SQLite file or a
        ``postgresql://`` DSN) that holds bodies over INLINE_LIMIT; the job then carries a
        reference. None reads ``BEANMAIL_STORE``; "" means none, and a body larger than
        beanstalkd's max-job-size raises JobTooBig."""
        self.url = url or os.environ.get("BEANMAIL_BEANSTALK_URL", DEFAULT_URL)
        split_urls(self.url)
        self.secret = secret if secret is not None else os.environ.get("BEANMAIL_SECRET") or None
        self.spool = spool if spool is not None else os.environ.get("BEANMAIL_SPOOL") or None
        self.blobs = blobs if blobs is not None else os.environ.get("BEANMAIL_STORE") or None
        self._blob_store: BlobStore | None = None  # opened on the first large job only
        self._blob_lock = threading.Lock()
        self.ttr = ttr
        self.timeout = timeout
        self.servers = ServerSet(self.url, timeout)

    def notify(self, template: str, to: Any, context: Mapping[str, Any] | None = None, *,
               entities: Mapping[str, Mapping[str, Any]] | None = None, priority: str = "normal",
               delay: int = 0, not_after: float | None = None, key: str | None = None,
               headers: Mapping[str, str] | None = None, digest: str | None = None, reply: bool = False) -> int:
        """Queue one templated message; returns the beanstalkd job id. ``digest`` ("hourly",
        "daily", "weekly") collects it into the recipient's digest instead (docs/digests.md);
        the recipient's own preference, when set, decides over it. ``reply``: the message gets a
        signed Reply-To whose replies come back as ``message.replied`` events (docs/events.md)."""
        _check_priority(priority)
        envelope = Envelope(
            kind="mail", id=key or env.new_id(), to=(parse_recipient(to),), template=template,
            context=dict(context or {}), entities={k: dict(v) for k, v in (entities or {}).items()},
            priority=priority, not_after=_int(not_after), created_at=env.now(),
            headers={**(headers or {}), **({"X-Beanmail-Reply": "1"} if reply else {})}, digest=_check_digest(digest),
        )
        return self.put(envelope, delay=delay)

    def send_raw(self, message: bytes, to: Iterable[str], *, sender: str = "", key: str | None = None,
                 priority: str = "normal", delay: int = 0) -> int:
        """Queue an already built RFC 5322 message (the Django backend uses this). ``to`` and
        ``sender``: addresses alone (``local@domain``), checked; AddressError (a ValueError) if not."""
        _check_priority(priority)
        recipients = tuple(Recipient(check_address(a)) for a in to)
        if not recipients:
            raise AddressError("", "a message needs at least one recipient")
        envelope = Envelope(
            kind="raw", id=key or env.new_id(), to=recipients,
            message=base64.b64encode(message).decode("ascii"), sender=check_address(sender) if sender else "",
            priority=priority, created_at=env.now(),
        )
        return self.put(envelope, delay=delay)

    def mailout(self, template: str, recipients: Iterable[Any], context: Mapping[str, Any] | None = None,
                *, key: str, priority: str = "bulk", exclude: Iterable[str] = (),
                not_after: float | None = None, digest: str | None = None,
                entities: Mapping[str, Mapping[str, Any]] | None = None, reply: bool = False,
                send_at: "datetime | float | None" = None, send_at_local: "str | datetime | None" = None) -> list[int]:
        """Queue a mailout as chunk jobs on the ``mailout`` tube; memory stays bounded by one chunk.
        ``reply``: each recipient's mail gets a reply address of its own, as notify's.
        ``digest``: every recipient's mail is collected into their digest of that period.
        ``entities``: resolved at send time for each recipient, as notify's (worker/entities.py:
        a resolver may find one not visible to a recipient, who then gets nothing).
        ``send_at`` (an aware datetime or a UNIX time) or ``send_at_local`` (``"08:00"``, ``"2026-12-07
        08:00"``: that clock time in each recipient's time zone, from their preferences) hold the
        chunks in the store (``blobs=``/BEANMAIL_STORE) until due (producer/schedule.py); nothing is
        queued now and the list returned is empty. ``beanmail mailout cancel KEY`` cancels it.
        A recipient that is not a valid address (``producer.addresses``): in a list or tuple it
        raises AddressError before anything is queued; from an iterator (read once) it is left
        out, the others are queued, and RecipientsRefused (an AddressError) then names it."""
        _check_priority(priority)
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"a mailout needs a key (each recipient's mail is keyed <key>:<address>), got {key!r}")
        excluded = {parse_recipient(a).address.lower() for a in exclude}
        base = dict(kind="mailout", template=template, context=dict(context or {}), priority=priority,
                    not_after=_int(not_after), exclude=tuple(sorted(excluded)), digest=_check_digest(digest),
                    entities={k: dict(v) for k, v in (entities or {}).items()},
                    headers={"X-Beanmail-Reply": "1"} if reply else {})
        if isinstance(recipients, (list, tuple)):  # a bad address refuses the mailout before anything is queued
            recipients = [parse_recipient(r) for r in recipients]
        refused: list[AddressError] = []
        valid = self._valid_recipients(recipients, excluded, refused)
        empty = len(env.encode(Envelope(id=f"{key}#000000", to=(), created_at=env.now(), **base))) + 80
        if send_at is not None or send_at_local is not None:
            self._schedule(template, valid, key, base, empty, priority, send_at, send_at_local)
            ids: list[int] = []
        else:
            ids = [self._put_chunk(key, n, chunk, base) for n, (_, chunk) in enumerate(_chunks(valid, empty))]
        if refused:
            raise RecipientsRefused(refused, ids)
        return ids

    @staticmethod
    def _valid_recipients(recipients: Iterable[Any], excluded: set[str], refused: list[AddressError]) -> Iterator[Recipient]:
        for value in recipients:
            try:
                recipient = parse_recipient(value)
            except AddressError as exc:  # an iterator is read once: left out, named at the end
                refused.append(exc)
                continue
            if recipient.address.lower() not in excluded:
                yield recipient

    def _schedule(self, template: str, recipients: Iterator[Recipient], key: str, base: dict[str, Any], empty: int,
                  priority: str, send_at: "datetime | float | None", send_at_local: "str | datetime | None") -> None:
        """The chunks into the store, each with its due time; the mailout row says "scheduled"
        only once the last chunk is written, so a releaser never sends half of one."""
        from . import schedule as sched

        if (send_at is None) == (send_at_local is None):
            raise sched.ScheduleError("give one of send_at and send_at_local, not both")
        now = sched.clock()
        local = ""
        if send_at is not None:
            when = sched.instant(send_at)
            if when <= now:
                raise sched.ScheduleError(f"mailout {key!r}: send_at {datetime.fromtimestamp(when, sched.zone('UTC')).isoformat()} is not"
                                          " in the future (a mailout for now: leave send_at out)")
            due: Callable[[list[Recipient]], list[float]] = lambda batch: [when] * len(batch)  # noqa: E731
        else:
            sched.parse_local(send_at_local)  # type: ignore[arg-type] - a bad clock time raises before anything is written
            local = send_at_local.isoformat(" ", "minutes") if isinstance(send_at_local, datetime) else str(send_at_local)
            fallback = sched.default_timezone()
            zones = self.schedule_store().zones

            def due(batch: list[Recipient]) -> list[float]:
                by_address = zones([r.address for r in batch], fallback)
                return [sched.local_due(send_at_local, by_address[r.address.lower()], now)  # type: ignore[arg-type]
                        for r in batch]
        store = self.schedule_store()
        store.begin(key, template, priority, local)
        count = chunks = 0
        first, last = float("inf"), 0.0
        try:
            for n, (due_at, chunk) in enumerate(_chunks(recipients, empty, due)):
                if due_at <= now:  # send_at_local on a day that has passed (for these recipients)
                    raise sched.ScheduleError(f"mailout {key!r}: {local} is past for {chunk[0].address}"
                                              f" ({datetime.fromtimestamp(due_at, sched.zone('UTC')).isoformat()})")
                body = env.encode(Envelope(id=f"{key}#{n}", to=tuple(chunk), created_at=env.now(), **base), self.secret)
                store.add_chunk(key, n, due_at, len(chunk), body)
                count, chunks = count + len(chunk), chunks + 1
                first, last = min(first, due_at), max(last, due_at)
        except BaseException:
            store.abandon(key)  # nothing half-scheduled; the same key may be scheduled again
            raise
        # no recipient at all: nothing to wait for (listed as released, like an empty mailout put now)
        store.finish(key, count, chunks, first if chunks else 0.0, last, state="scheduled" if chunks else "released")

    def schedule_store(self) -> "Schedule":
        from .schedule import Schedule

        with self._blob_lock:
            if getattr(self, "_schedule_store", None) is None:
                if not self.blobs:
                    raise BlobError("a scheduled mailout is held in the store: configure it (Notifier(blobs=...)"
                                    " or BEANMAIL_STORE)")
                self._schedule_store = Schedule(self.blobs)
            return self._schedule_store

    def notify_watchers(self, template: str, watchers: Iterable[Any], actor: Any = None,
                        context: Mapping[str, Any] | None = None, *, key: str, priority: str = "normal",
                        not_after: float | None = None, digest: str | None = None,
                        entities: Mapping[str, Mapping[str, Any]] | None = None, reply: bool = False) -> list[int]:
        """The classic hook: tell everyone watching something, except whoever caused the event."""
        return self.mailout(template, watchers, context, key=key, priority=priority,
                            exclude=[actor] if actor else (), not_after=not_after, digest=digest, entities=entities,
                            reply=reply)

    # -- a recipient's delivery preferences (docs/digests.md), written to the store directly ----
    def set_preferences(self, address: str, *, mode: str | None = None, timezone: str | None = None,
                        quiet: str | tuple[str, str] | None = "keep") -> "Preferences":
        """``mode``: "immediate", "hourly", "daily", "weekly", "off" or "default" (each job's
        ``digest`` decides); ``timezone``: an IANA name; ``quiet``: "22:00-07:00" or None for
        none. What is not given stays as it was. Needs the store (``blobs=``, BEANMAIL_STORE)."""
        return self.preference_store().set(parse_recipient(address).address, mode=mode, timezone=timezone,
                                           quiet=quiet)

    def preferences(self, address: str) -> "Preferences | None":
        return self.preference_store().get(parse_recipient(address).address)

    def clear_preferences(self, address: str) -> bool:
        return self.preference_store().clear(parse_recipient(address).address)

    def preference_store(self) -> "PreferenceStore":
        from .prefs import PreferenceStore

        with self._blob_lock:
            if getattr(self, "_prefs", None) is None:
                if not self.blobs:
                    raise BlobError("preferences live in the store: configure it (Notifier(blobs=...) or BEANMAIL_STORE)")
                self._prefs = PreferenceStore(self.blobs)
            return self._prefs

    def _put_chunk(self, key: str, n: int, chunk: list[Recipient], base: dict[str, Any]) -> int:
        envelope = Envelope(id=f"{key}#{n}", to=tuple(chunk), created_at=env.now(), **base)
        return self.put(envelope, tube=env.MAILOUT_TUBE)

    def put(self, envelope: Envelope, *, delay: int = 0, tube: str | None = None) -> int:
        """The beanstalkd job id; 0 when the job went to the spool instead. A body over
        INLINE_LIMIT is stored in the blob store first, and a small ``ref`` job queued for it
        (a mailout chunk excepted)."""
        default_tube, pri = env.PRIORITIES[envelope.priority]
        tube = tube or default_tube
        body = env.encode(envelope, self.secret)
        try:
            # mailout chunks are sized to fit (CHUNK_BYTES), and fan-out reads them inline
            if len(body) > INLINE_LIMIT and self.blobs and envelope.kind != "mailout":
                body = self._by_reference(envelope, body)
            return self._put(body, tube, pri, delay, envelope.id)
        except EnqueueError as exc:
            if exc.job is None:
                exc.job = (tube, pri, delay, self.ttr, body)
            raise

    def _by_reference(self, envelope: Envelope, body: bytes) -> bytes:
        """The blob is written before the job exists, so a worker never meets a dangling ref.
        A job that then fails to queue leaves its blob behind: harmless, and safer than deleting
        a blob a job that did reach beanstalkd (its reply lost) still needs."""
        try:
            blobs = self.blob_store()
            ref = blobs.put(body)
            store = {"id": blobs.identity(), "at": blob_where(blobs.location)}  # so a worker reading another store can say so
        except BlobError as exc:
            raise BlobUnavailable(f"job {envelope.id!r} of {len(body)} bytes needs the blob store: {exc}") from exc
        ref_envelope = Envelope(kind="ref", id=envelope.id, to=(), priority=envelope.priority, ref=ref, store=store,
                                created_at=env.now())
        return env.encode(ref_envelope, self.secret)

    def blob_store(self) -> BlobStore:
        """The blob store, opened once per Notifier; BlobError if none is configured or it fails."""
        with self._blob_lock:
            if self._blob_store is None:
                if not self.blobs:
                    raise BlobError("no blob store configured")
                self._blob_store = BlobStore(self.blobs)
            return self._blob_store

    def _put(self, body: bytes, tube: str, pri: int, delay: int, key: str | None = None) -> int:
        """The beanstalkd job id; 0 when the job went to the spool instead."""
        try:
            return self.put_body(tube, pri, delay, self.ttr, body, key=key)
        except Unreachable:
            if not self.spool:
                raise
            spool.append(self.spool, tube, pri, delay, self.ttr, body)
            return 0

    def put_body(self, tube: str, pri: int, delay: int, ttr: int, body: bytes, *, key: str | None = None) -> int:
        """One put, on the key's server or the next that answers."""
        try:
            return self.servers.attempt(key, lambda server: server.put(tube, pri, delay, ttr, body))
        except Refused as exc:
            raise JobTooBig(f"{exc} ({exc.max_job_size} bytes); {HOW_TO_STORE}") from None
        except Unanswered as exc:
            raise Unreachable(f"no beanstalkd server took the job: {exc}") from exc

    def put_many(self, jobs: Iterable[tuple[str, int, bytes]], batch: int = 256) -> list[int]:
        """Puts of ``(tube, priority, body)`` pipelined: one write and one read per batch rather
        than a round trip per job, which is what a fan-out of thousands spends its time on.
        A failure part-way raises EnqueueError; putting the batch again is safe when the jobs
        carry idempotency keys, as fan-out's do."""
        ids: list[int] = []
        pending: list[tuple[str, int, bytes]] = []
        for job in jobs:
            pending.append(job)
            if len(pending) >= batch:
                ids += self._put_batch(pending)
                pending = []
        if pending:
            ids += self._put_batch(pending)
        return ids

    def _put_batch(self, jobs: list[tuple[str, int, bytes]]) -> list[int]:
        try:
            return self.servers.attempt(None, lambda server: server.put_batch(jobs, self.ttr))
        except Unanswered as exc:
            raise Unreachable(f"no beanstalkd server took the batch: {exc}") from exc

    def close(self) -> None:
        self.servers.close()
        with self._blob_lock:
            if self._blob_store is not None:
                self._blob_store.close()
                self._blob_store = None
            if getattr(self, "_prefs", None) is not None:
                self._prefs.close()
                self._prefs = None
            if getattr(self, "_schedule_store", None) is not None:
                self._schedule_store.close()
                self._schedule_store = None


def _check_priority(priority: str) -> None:
    if priority not in env.PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(env.PRIORITIES)}, got {priority!r}")


def _check_digest(digest: str | None) -> str:
    if digest and digest not in env.DIGEST_PERIODS:
        raise ValueError(f"digest must be one of {', '.join(env.DIGEST_PERIODS)}, got {digest!r}")
    return digest or ""


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _chunks(recipients: Iterable[Recipient], empty: int,
            due: Callable[[list[Recipient]], list[float]] | None = None) -> Iterator[tuple[float, list[Recipient]]]:
    """(due time, chunk) pairs, each chunk's body under CHUNK_BYTES; with ``due`` (a batch's due
    times), recipients due at the same instant share chunks. Memory: one open chunk per distinct
    due time (a few hundred time zones at most) and a batch of 500."""
    open_chunks: dict[float, tuple[list[Recipient], int]] = {}
    batch: list[Recipient] = []

    def place(batch: list[Recipient]) -> Iterator[tuple[float, list[Recipient]]]:
        for recipient, due_at in zip(batch, due(batch) if due else [0.0] * len(batch)):
            chunk, size = open_chunks.get(due_at, ([], empty))
            cost = len(env.canonical(recipient.to_json())) + 1
            if chunk and size + cost > CHUNK_BYTES:
                yield due_at, chunk
                chunk, size = [], empty
            chunk.append(recipient)
            open_chunks[due_at] = (chunk, size + cost)

    for recipient in recipients:
        batch.append(recipient)
        if len(batch) >= 500:
            yield from place(batch)
            batch = []
    yield from place(batch)
    for due_at, (chunk, _) in sorted(open_chunks.items(), key=lambda kv: kv[0]):
        if chunk:
            yield due_at, chunk
