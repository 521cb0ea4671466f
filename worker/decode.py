"""The pipeline's first step: a job body to the envelope it carries, or Poison saying why not.
The signature checked with the workers' secrets, a ``ref`` job's body read from the blob store
(a missing one said to be gone, or in another store than the producer wrote to), the envelope
checked on its own (worker/validate.py) and for what the store cannot keep."""

from __future__ import annotations

from producer import envelope as env
from producer.blobs import where as blob_where
from producer.envelope import Envelope

from .outcomes import Poison, Skipped
from .settings import Settings
from .store import FINAL, Store, unstorable
from .validate import check_envelope


class Decoder:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        # of the last body decoded, as far as it got (for the log and the record when a check fails):
        self.last_ref = ""  # its blob reference, "" when it was inline
        self.last_envelope: Envelope | None = None  # the envelope read (the ref's, or the job it stands for)

    def decode(self, body: bytes) -> Envelope:
        self.last_ref, self.last_envelope = "", None
        envelope = self.last_envelope = self._decode(body)
        if envelope.kind == "ref":
            self.last_ref = envelope.ref
            envelope = self.last_envelope = self._dereference(envelope)
        envelope = self.last_envelope = check_envelope(envelope)
        self._check_storable(envelope)
        return envelope

    @staticmethod
    def _check_storable(envelope: Envelope) -> None:
        """Poison, for this job alone, when what the store keys its rows by (the key, the
        template, the recipients) cannot be stored: a NUL, a lone surrogate, an overlong key."""
        values = [("key", envelope.id), ("template", envelope.template)]
        values += [("recipient", r.address) for r in envelope.to]
        for what, value in values:
            why = unstorable(what, value)
            if why is not None:
                raise Poison(f"unstorable job: {why}")

    def _decode(self, body: bytes) -> Envelope:
        try:
            return env.decode(body, self.settings.secret or None)
        except env.EnvelopeError as exc:
            raise Poison(f"bad envelope: {exc}") from None

    def _dereference(self, ref: Envelope) -> Envelope:
        """The job a ``ref`` envelope stands for, from the blob store. A key that already ended
        is a duplicate (its blob was removed with its final outcome), not a lost body."""
        done = self.store.deliveries(key=ref.id, limit=1)
        if done and done[0].outcome in FINAL:
            raise Skipped(f"duplicate: key already {done[0].outcome}")
        body = self.store.blob(ref.ref)
        if body is None:
            mine = self.store.identity()
            if ref.store and ref.store["id"] != mine:
                raise Poison(f"blob {ref.ref} is in another store: the producer stored it in {ref.store['at']} (store"
                             f" {ref.store['id'][:8]}), this worker reads {blob_where(self.store.location)} (store"
                             f" {mine[:8]}); point the producer's and the workers' BEANMAIL_STORE at one store")
            raise Poison(f"blob {ref.ref} is gone: the message body stored by reference was removed")
        envelope = self._decode(body)
        if envelope.id != ref.id or envelope.kind == "ref":
            raise Poison(f"blob {ref.ref} holds job {envelope.id!r} ({envelope.kind}), not {ref.id!r}")
        return envelope
