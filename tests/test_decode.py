"""The pipeline's first step (worker/decode.py), in the unit tier with a store on an SQLite file:
what a body becomes, and the reason a job that cannot be sent is buried with."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer import envelope as env
from producer.blobs import BlobStore
from worker.decode import Decoder
from worker.outcomes import Poison, Skipped
from worker.settings import Settings
from worker.store import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def decoder(tmp_path: Path) -> Decoder:
    settings = Settings(store=str(tmp_path / "store.sqlite3"), secret="new,old")
    return Decoder(settings, Store(settings.store))


def mail(key: str = "k1", **fields: object) -> env.Envelope:
    return env.Envelope(kind="mail", id=key, to=(env.Recipient("zoe@example.com"),), template="welcome",
                        context={"name": "Zoë"}, **fields)


def test_a_job_signed_with_any_of_the_workers_secrets_is_read(decoder: Decoder) -> None:
    for secret in ("new", "old"):
        assert decoder.decode(env.encode(mail(), secret)).id == "k1"
    assert decoder.last_ref == "" and decoder.last_envelope is not None


@pytest.mark.parametrize("body, why", [
    (env.encode(mail(), "stolen"), "bad signature"),
    (env.encode(mail()), "unsigned"),  # the workers have a secret: an unsigned job is no job of ours
    (b"\xff\xfe not utf-8", "not UTF-8"),
    (b'{"v": 2, "kind": "mail"}', "bad envelope"),
])
def test_a_body_that_is_no_job_of_ours_is_poison_naming_why(decoder: Decoder, body: bytes, why: str) -> None:
    with pytest.raises(Poison, match=why):
        decoder.decode(body)


def test_an_expired_job_is_skipped_and_still_named_for_the_log(decoder: Decoder) -> None:
    with pytest.raises(Skipped, match="expired"):
        decoder.decode(env.encode(mail(key="late", not_after=1), "new"))
    assert decoder.last_envelope is not None and decoder.last_envelope.id == "late"


def test_a_ref_job_is_the_job_its_blob_holds(decoder: Decoder, tmp_path: Path) -> None:
    with BlobStore(decoder.store.location) as blobs:
        ref = blobs.put(env.encode(mail(key="big"), "new"))
        store = {"id": blobs.identity(), "at": decoder.store.location}
    pointer = env.Envelope(kind="ref", id="big", to=(), ref=ref, store=store, created_at=env.now())
    assert decoder.decode(env.encode(pointer, "new")).template == "welcome"
    assert decoder.last_ref == ref
    other = env.Envelope(kind="ref", id="other", to=(), ref=ref, created_at=env.now())
    with pytest.raises(Poison, match="holds job 'big'"):  # a ref must stand for the job of its own key
        decoder.decode(env.encode(other, "new"))


def test_a_missing_blob_is_gone_or_in_another_store(decoder: Decoder) -> None:
    gone = "sha256:" + "0" * 64
    mine = {"id": decoder.store.identity(), "at": decoder.store.location}
    theirs = {"id": "f" * 32, "at": "/srv/web/var/beanmail.sqlite3"}
    with pytest.raises(Poison, match="is gone"):
        decoder.decode(env.encode(env.Envelope(kind="ref", id="a", to=(), ref=gone, store=mine), "new"))
    with pytest.raises(Poison, match=r"in another store: the producer stored it in /srv/web/var/beanmail.sqlite3"
                                     r" \(store ffffffff\), this worker reads"):
        decoder.decode(env.encode(env.Envelope(kind="ref", id="b", to=(), ref=gone, store=theirs), "new"))


def test_a_key_the_store_cannot_keep_is_poison_for_that_job_alone(tmp_path: Path) -> None:
    """A NUL in a key (another language's producer wrote it; Python's refuses it at notify)."""
    settings = Settings(store=str(tmp_path / "open.sqlite3"))  # no secret: unsigned jobs are read
    decoder = Decoder(settings, Store(settings.store))
    body = (b'{"v":2,"kind":"mail","id":"bad\\u0000key","to":"zoe@example.com","template":"welcome",'
            b'"priority":"normal","created_at":1}')
    with pytest.raises(Poison, match="unstorable job: key holds a NUL character"):
        decoder.decode(body)
    assert decoder.decode(body.replace(b"bad\\u0000key", b"good")).id == "good"
