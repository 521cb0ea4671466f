"""Large messages by reference: the body goes to the blob store (the worker's store), the job
carries ``sha256:<hex>``; without a store, a job too big for beanstalkd says how to fix it."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from pathlib import Path

import greenstalk
import pytest

from producer import envelope as env
from producer.blobs import BlobError, BlobStore
from producer.client import INLINE_LIMIT, JobTooBig, Notifier, connect

from .servers import Beanstalkd, free_port


def take_one(url: str) -> tuple[str, bytes]:
    """The only ready job: its tube and body (removed from beanstalkd)."""
    with connect(url, encoding=None) as c:
        for tube in env.MAIL_TUBES:
            c.watch(tube)
        job = c.reserve(0)
        tube = c.stats_job(job)["tube"]
        c.delete(job)
        with pytest.raises(greenstalk.TimedOutError):
            c.reserve(0)
    return tube, job.body


def test_blob_store_is_content_addressed_and_shared(store_location: str) -> None:
    data = bytes(range(256)) * 1000  # not text: every byte value survives
    with BlobStore(store_location) as one, BlobStore(store_location) as other:
        ref = one.put(data)
        assert ref == "sha256:" + hashlib.sha256(data).hexdigest()
        assert other.put(data) == ref  # a retried put: no error, one row
        assert other.get(ref) == data
        assert one.get("sha256:" + "0" * 64) is None
        one.delete(ref)
        assert other.get(ref) is None
        other.delete(ref)  # deleting what is gone is fine: the worker may race a second copy
        with pytest.raises(ValueError, match="not a blob reference"):
            one.get("../etc/passwd")


def test_blob_table_has_the_columns_the_worker_reads(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    BlobStore(str(path)).close()
    db = sqlite3.connect(path)
    assert [(r[1], r[2], r[3], r[5]) for r in db.execute("PRAGMA table_info(blobs)")] == [
        ("id", "TEXT", 0, 1), ("data", "BLOB", 1, 0), ("created_at", "DOUBLE PRECISION", 1, 0)]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_unusable_blob_store_raises_blob_error(tmp_path: Path) -> None:
    with pytest.raises(BlobError, match="cannot be opened"):
        BlobStore(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing", timeout=2)
    (tmp_path / "not-a-db").write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(BlobError):
        BlobStore(str(tmp_path / "not-a-db"))


@pytest.mark.parametrize("megabytes", [2, 25])
def test_a_large_send_raw_queues_a_small_ref_job_whose_blob_holds_the_whole_body(
        beanstalkd: Beanstalkd, store_location: str, megabytes: int) -> None:
    message = b"Subject: big\r\nTo: a@example.com\r\n\r\n" + (b"0123456789abcdef" * 64 * 1024 * megabytes)
    notifier = Notifier(beanstalkd.url, secret="new,old", blobs=store_location)
    assert notifier.send_raw(message, ["a@example.com"], key="invoice:7", priority="urgent") > 0
    tube, body = take_one(beanstalkd.url)
    assert tube == "mail.urgent" and len(body) < 400 + len(store_location)  # the store is named in it
    ref = env.decode(body, "new")  # signed with the first secret, like every job
    assert (ref.kind, ref.id, ref.priority, ref.to) == ("ref", "invoice:7", "urgent", ())
    with BlobStore(store_location) as blobs:
        assert ref.store["id"] == blobs.identity() and len(ref.store["id"]) == 32  # the store that holds it
    with BlobStore(store_location) as blobs:
        whole = blobs.get(ref.ref)
    assert whole is not None and ref.ref == "sha256:" + hashlib.sha256(whole).hexdigest()
    inner = env.decode(whole, "new")
    assert (inner.kind, inner.id, inner.to[0].address) == ("raw", "invoice:7", "a@example.com")
    assert base64.b64decode(inner.message) == message
    notifier.close()


def test_notify_with_a_large_context_goes_by_reference_and_small_jobs_stay_inline(
        beanstalkd: Beanstalkd, tmp_path: Path) -> None:
    notifier = Notifier(beanstalkd.url, blobs=str(tmp_path / "store.sqlite3"))
    notifier.notify("welcome", "a@example.com", {"name": "x" * (INLINE_LIMIT - 200)}, key="fits")
    assert env.decode(take_one(beanstalkd.url)[1]).kind == "mail"
    notifier.notify("welcome", "a@example.com", {"name": "x" * INLINE_LIMIT}, key="large")
    ref = env.decode(take_one(beanstalkd.url)[1])
    assert ref.kind == "ref" and env.decode(notifier.blob_store().get(ref.ref)).context["name"] == "x" * INLINE_LIMIT


def test_mailout_chunks_stay_inline_with_a_blob_store(beanstalkd: Beanstalkd, tmp_path: Path) -> None:
    """Fan-out reads chunks inline; they are sized under beanstalkd's limit, not INLINE_LIMIT."""
    notifier = Notifier(beanstalkd.url, blobs=str(tmp_path / "store.sqlite3"))
    [job_id] = notifier.mailout("digest", [f"user{i:05d}@example.com" for i in range(1200)], key="m")
    with connect(beanstalkd.url, encoding=None) as c:
        job = c.peek(job_id)
        assert c.stats_job(job)["tube"] == env.MAILOUT_TUBE
    assert len(job.body) > INLINE_LIMIT and env.decode(job.body).kind == "mailout"


def test_a_large_job_spooled_during_an_outage_is_a_ref_line(beanstalkd: Beanstalkd, tmp_path: Path) -> None:
    from producer import spool

    path = str(tmp_path / "beanmail.spool")
    notifier = Notifier(beanstalkd.url, blobs=str(tmp_path / "store.sqlite3"), spool=path)
    beanstalkd.stop()
    assert notifier.send_raw(b"Subject: x\r\n\r\n" + b"y" * 2_000_000, ["a@example.com"], key="k") == 0
    assert Path(path).stat().st_size < 1000  # the body is in the blob store, not the spool
    beanstalkd.start()
    assert spool.flush(path, Notifier(beanstalkd.url, spool="", blobs="").put_body) == 1
    assert env.decode(take_one(beanstalkd.url)[1]).kind == "ref"


def test_too_big_without_a_blob_store_names_the_size_the_limit_and_the_setting(beanstalkd: Beanstalkd) -> None:
    notifier = Notifier(beanstalkd.url, blobs="")
    message = b"Subject: x\r\n\r\n" + b"y" * 100_000
    with pytest.raises(JobTooBig) as caught:
        notifier.send_raw(message, ["a@example.com"], key="k")
    text = str(caught.value)
    size = len(caught.value.job[4])
    assert f"job of {size} bytes" in text and "max-job-size (65535 bytes)" in text
    assert "configure a blob store" in text and "BEANMAIL_STORE" in text
    assert notifier.notify("welcome", "a@example.com", {"name": "x"}) > 0  # the connection is fine


def test_a_worker_reading_another_store_says_where_the_blob_is_instead_of_calling_it_gone(
        settings, smtp, tmp_path: Path) -> None:  # noqa: ANN001
    """The trial's lost PDF: the app wrote the blob to a store of its own, the worker reads its
    own. The job is buried naming both stores; a blob really removed from the worker's own store
    is still 'gone'."""
    from worker.store import Store

    from .conftest import run_burst

    Store(settings.store).close()  # the workers' store exists (a worker started once)
    elsewhere = tmp_path / "web" / "beanmail.sqlite3"
    elsewhere.parent.mkdir()
    Store(str(elsewhere)).close()  # another store, as a misconfigured web app would point at
    big = {"name": "x" * (INLINE_LIMIT + 10)}
    job = Notifier(settings.beanstalk_url, blobs=str(elsewhere)).notify("welcome", "a@example.com", big, key="pdf:1")
    run_burst(settings)
    outcome, reason = Store(settings.store).failure(settings.beanstalk_url, job)[:2]
    assert outcome == "poison" and "is in another store" in reason
    assert str(elsewhere) in reason and str(Path(settings.store).resolve()) in reason and smtp.messages == []
    with BlobStore(settings.store) as blobs:  # a ref to the workers' own store whose blob was removed
        store = {"id": blobs.identity(), "at": str(settings.store)}
    ref = env.Envelope(kind="ref", id="pdf:2", to=(), ref="sha256:" + "0" * 64, store=store, created_at=env.now())
    job = Notifier(settings.beanstalk_url).put(ref)
    run_burst(settings)
    outcome, reason = Store(settings.store).failure(settings.beanstalk_url, job)[:2]
    assert outcome == "poison" and "is gone" in reason
