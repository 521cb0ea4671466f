"""Nothing lost, nothing sent twice, at the edges a production shop meets: a full disk under the
store, a store deleted under the workers, a server that answers the end of data late or never,
bad settings, senders and headers. Each test is one row of the issue that found the break."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from producer import Notifier
from producer import envelope as env
from producer.client import connect
from worker.loop import Worker
from worker.outcomes import Action, Backoff, Deferred, Fate, InDoubt, disposition
from worker.pipeline import Pipeline
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, bare_env, beanmail, run_burst
from .servers import SmtpServer, wait_until


def tube_counts(settings: Settings) -> Counter[str]:
    counts: Counter[str] = Counter()
    with connect(settings.beanstalk_url, encoding=None) as c:
        for tube in c.tubes():
            s = c.stats_tube(tube)
            for state in ("ready", "reserved", "delayed", "buried"):
                counts[state] += int(s[f"current-jobs-{state}"])
    return counts


def subjects(smtp: SmtpServer) -> Counter[str]:
    return Counter(str(m.message["Subject"]) for m in list(smtp.messages))


@contextlib.contextmanager
def workers(settings: Settings, n: int = 1) -> Iterator[list[Worker]]:
    """``n`` in-process worker loops, each with its own store connection, as a pool would run."""
    stores = [Store(settings.store) for _ in range(n)]
    loops = [Worker(settings, Pipeline(settings, s), s) for s in stores]
    threads = [threading.Thread(target=w.run, daemon=True) for w in loops]
    for t in threads:
        t.start()
    try:
        yield loops
    finally:
        for w in loops:
            w.stopping = True
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        for s in stores:
            s.close()


# -- the store's disk fills up, the store is deleted -----------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MB filesystem (the suite runs as root), unmounted after, also on failure."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_store_defers_jobs_and_loses_or_doubles_nothing(settings: Settings, smtp: SmtpServer,
                                                                             tmpfs: Path) -> None:
    settings = settings.replace(store=str(tmpfs / "store.sqlite3"), backoff_base=1, backoff_max=1, max_attempts=100)
    Store(settings.store).close()
    n = 200
    notifier = Notifier(settings.beanstalk_url)
    for i in range(n):
        notifier.notify("welcome", f"user{i}@example.com", {"name": f"k{i}"}, key=f"disk:{i}")
    filler = tmpfs / "filler"
    with workers(settings):
        smtp.wait_for(40, timeout=30)
        # every free block taken (the close may meet the full disk too, flushing what is left)
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        wait_until(lambda: tube_counts(settings)["delayed"] > 0, 30, "jobs deferred while the disk is full")
        assert tube_counts(settings)["buried"] == 0
        filler.unlink()
        wait_until(lambda: len(smtp.messages) >= n and tube_counts(settings)["delayed"] == 0
                   and tube_counts(settings)["ready"] == 0, 60, f"all {n} delivered")
    got = subjects(smtp)
    assert len(got) == n and max(got.values()) == 1, "every key delivered exactly once"
    assert tube_counts(settings)["buried"] == 0
    counts = Store(settings.store).outcome_counts()
    # a send whose record hit the full disk stays "claimed": delivered, its key still held
    assert counts.get("sent", 0) + counts.get("claimed", 0) == n
    print(f"disk full: {n} jobs, {len(got)} delivered, 0 duplicates, 0 buried, store {counts}")


def test_a_store_deleted_under_the_worker_is_restored_and_keeps_every_record(settings: Settings,
                                                                            smtp: SmtpServer, tmp_path: Path) -> None:
    folder = tmp_path / "storedir"
    settings = settings.replace(store=str(folder / "store.sqlite3"))
    n = 150
    notifier = Notifier(settings.beanstalk_url)
    def notify(i: int) -> None:
        notifier.notify("welcome", f"user{i}@example.com", {"name": f"k{i}"}, key=f"gone:{i}")
    with workers(settings, 2):
        for i in range(n // 2):
            notify(i)
        smtp.wait_for(n // 2, timeout=30)  # half sent and recorded; then the store goes
        shutil.rmtree(folder)
        more = iter(range(n // 2, n))

        def restored() -> bool:
            """A worker notices at its next statement (at most one check per 0.2 s): feed it work
            until it has put the file back, then the rest."""
            if (folder / "store.sqlite3").exists():
                return True
            notify(next(more))
            return False
        wait_until(restored, 30, "the store file restored")
        for i in more:
            notify(i)
        smtp.wait_for(n, timeout=60)
        # opened only once the workers restored it (a store opened first would be a new, empty file)
        wait_until(lambda: Path(settings.store).exists(), 30, "the workers to restore the store")
        wait_until(lambda: Store(settings.store).outcome_counts().get("sent") == n, 30, "every record")
        for i in range(n):  # the same keys again: the restored ledger knows them all
            notifier.notify("welcome", f"user{i}@example.com", {"name": f"k{i}"}, key=f"gone:{i}")
        wait_until(lambda: sum(tube_counts(settings).values()) == 0, 30, "the repeats handled")
    got = subjects(smtp)
    assert len(got) == n and max(got.values()) == 1
    assert Store(settings.store).outcome_counts() == {"sent": n}


# -- a slow server: the reply to the end of data comes late, or never ---------------------------------

def test_a_server_that_answers_the_end_of_data_after_the_ttr_gets_one_copy(settings: Settings, smtp: SmtpServer) -> None:
    """Measured before: each of 4 keys accepted 8 times and the store said exhausted."""
    smtp.handler.data_delay = 3.5
    settings = settings.replace(smtp_timeout=2.5, ttr=3)
    notifier = Notifier(settings.beanstalk_url, ttr=3)  # beanstalkd's reservation and the claim's lease: 3 s
    for i in range(4):  # each key queued twice, too: the store's claim must outlive the TTR
        for _ in range(2):
            notifier.notify("welcome", f"slow{i}@example.com", {"name": f"slow{i}"}, key=f"slow:{i}")
    with workers(settings, 2):
        wait_until(lambda: sum(tube_counts(settings).values()) == 0, 60, "every job handled")
    assert subjects(smtp) == Counter({f"Welcome to beanmail, slow{i}!": 1 for i in range(4)})
    assert Store(settings.store).outcome_counts() == {"sent": 4}


def test_no_reply_to_the_end_of_data_is_in_doubt_and_not_resent(settings: Settings, smtp: SmtpServer) -> None:
    smtp.handler.reply_delay = 3  # takes the message at its end of data, answers after the client gave up
    settings = settings.replace(smtp_data_timeout=1, in_doubt_delay=600)
    notifier = Notifier(settings.beanstalk_url)
    job = notifier.notify("welcome", "doubt@example.com", {"name": "doubt"}, key="doubt:1")
    notifier.notify("welcome", "doubt@example.com", {"name": "doubt"}, key="doubt:1")  # a second copy queued
    run_burst(settings)
    smtp.wait_for(1, timeout=10)  # the server took it, late
    [row] = Store(settings.store).deliveries(key="doubt:1")
    assert row.outcome == "in_doubt" and "no reply to the end of data" in row.reason
    with connect(settings.beanstalk_url, encoding=None) as c:
        stats = c.stats_job(job)
    assert stats["state"] == "delayed" and int(stats["delay"]) == 600
    assert tube_counts(settings)["ready"] == 0  # the queued copy is held too, not sent
    assert len(smtp.messages) == 1


# -- one owner for outcomes ---------------------------------------------------------------------------

def test_in_doubt_and_free_deferrals_in_the_outcome_table() -> None:
    b = Backoff(1, 2, max_attempts=3, in_doubt_delay=900)
    d = disposition(InDoubt("no reply"), 1, b)
    assert (d.action, d.outcome, d.delay) == (Action.RELEASE, Fate.IN_DOUBT, 900)
    assert disposition(InDoubt("no reply"), 3, b).outcome is Fate.EXHAUSTED
    slot = disposition(Deferred("rate limit", delay=4), 99, b)
    assert slot.free and slot.delay == 4 and slot.action is Action.RELEASE
    assert not disposition(Deferred("451"), 1, b).free


def test_a_rate_limit_release_does_not_use_up_the_retry_budget(settings: Settings, smtp: SmtpServer) -> None:
    """Two releases for a booked slot, then a 451: still the first real attempt, not exhausted."""
    settings = settings.replace(max_attempts=2)
    store = Store(settings.store)
    pipeline = Pipeline(settings, store)
    job = env.encode(env.Envelope(kind="mail", id="budget:1", to=(env.Recipient("tempfail@example.com"),),
                                  template="welcome", context={"name": "x"}))
    for _ in range(2):
        store.finish("budget:1", "tempfail@example.com", "welcome", "deferred", "rate limit", free=True,
                     overwrite_final=False)
    result = pipeline.run(job, lambda: 3)  # beanstalkd counts 2 releases: this is its third reservation
    assert result.disposition.outcome is Fate.DEFERRED, result.disposition


def test_a_stage_that_raises_is_buried_through_the_outcome_table(settings: Settings, smtp: SmtpServer) -> None:
    from worker.job import OneByOne

    class Broken(OneByOne):  # a stage that handles one job at a time, with a bug
        backoff = Backoff()

        def handle(self, job):  # noqa: ANN001, ANN201
            raise ZeroDivisionError("a bug")

    job = Notifier(settings.beanstalk_url).notify("welcome", "z@example.com", {"name": "z"})
    store = Store(settings.store)
    Worker(settings, Broken(), store).run(burst=True)
    with connect(settings.beanstalk_url, encoding=None) as c:
        assert c.stats_job(job)["state"] == "buried"
    assert "bug: ZeroDivisionError: a bug" in store.failure(settings.beanstalk_url, job)[1]


# -- settings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [("BEANMAIL_SMTP_TIMEOUT", "0"), ("BEANMAIL_SMTP_TIMEOUT", "-1"),
                                        ("BEANMAIL_SMTP_DATA_TIMEOUT", "0"), ("BEANMAIL_DNS_TIMEOUT", "nan")])
def test_a_timeout_that_is_not_positive_stops_the_worker_at_start(settings: Settings, name: str, value: str) -> None:
    proc = beanmail("worker", "--burst", env=bare_env(settings, **{name: value}), check=False)
    assert proc.returncode == 78 and name in proc.stderr, proc.stderr


def test_defaults_are_relative_to_the_working_folder_not_the_package(settings: Settings, tmp_path: Path) -> None:
    """A non-editable install must write nothing into site-packages; a worker started where
    there is no templates/ folder stops at start (78) saying where it looked."""
    env = {k: v for k, v in bare_env(settings).items() if k != "BEANMAIL_STORE"}
    proc = subprocess.run([str(ROOT / ".venv/bin/beanmail"), "worker", "--burst"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78 and f"{tmp_path}/templates" in proc.stderr, proc.stderr
    (tmp_path / "templates").mkdir()
    proc = subprocess.run([str(ROOT / ".venv/bin/beanmail"), "worker", "--burst"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "var" / "beanmail.sqlite3").is_file()


def test_a_misspelled_variable_is_a_warning_naming_the_right_one(settings: Settings) -> None:
    proc = beanmail("worker", "--burst", env=bare_env(settings, BEANMAIL_SMTP_TIMOUT="3"), check=False)
    assert proc.returncode == 0
    assert "BEANMAIL_SMTP_TIMOUT is not a beanmail setting" in proc.stderr
    assert "did you mean BEANMAIL_SMTP_TIMEOUT?" in proc.stderr


def test_a_toml_key_error_lists_the_valid_keys(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "beanmail.toml").write_text('[beanmail]\nfrom = "Shop <shop@example.com>"\nsmtp_timout = 3\n')
    proc = beanmail("worker", "--burst", env=bare_env(settings, BEANMAIL_CONFIG=str(tmp_path / "beanmail.toml")),
                    check=False)
    assert proc.returncode == 78
    assert "smtp_timout" in proc.stderr and "smtp_timeout" in proc.stderr and "from," in proc.stderr


# -- addresses and headers --------------------------------------------------------------------------

@pytest.mark.parametrize("sender", ["webmaster@localhost", "shop@app.test"])
def test_a_development_sender_is_accepted(settings: Settings, smtp: SmtpServer, sender: str) -> None:
    """Django's default DEFAULT_FROM_EMAIL was buried as an invalid *recipient*."""
    message = f"From: {sender}\r\nTo: dev@localhost\r\nSubject: hi\r\n\r\nbody\r\n".encode()
    Notifier(settings.beanstalk_url).send_raw(message, ["dev@localhost", "qa@app.test"], sender=sender)
    run_burst(settings.replace(from_addr=f"Shop <{sender}>"))
    [got] = smtp.wait_for(1)
    assert got.mail_from == sender and got.rcpt_tos == ["dev@localhost", "qa@app.test"]
    assert got.message["Date"] and got.message["Message-ID"]  # added: the raw message had none


def test_a_bad_sender_is_poison_naming_the_sender(settings: Settings, smtp: SmtpServer) -> None:
    notifier = Notifier(settings.beanstalk_url)
    with pytest.raises(ValueError, match="Invalid address"):  # Python refuses it at send_raw() (producer.addresses)
        notifier.send_raw(b"Subject: x\r\n\r\nx\r\n", ["ok@example.com"], sender="bad@@x")
    job = notifier.put(env.Envelope(kind="raw", id="bad-sender", to=(env.Recipient("ok@example.com"),),  # another language's
                                    message="U3ViamVjdDogeA0KDQp4DQo=", sender="bad@@x", created_at=env.now()))
    run_burst(settings)
    reason = Store(settings.store).failure(settings.beanstalk_url, job)[1]
    assert reason.startswith("bad envelope") is False and "invalid sender address" in reason, reason


def test_an_application_header_replaces_the_built_in_one(settings: Settings, smtp: SmtpServer) -> None:
    Notifier(settings.beanstalk_url).notify("welcome", "z@example.com", {"name": "z"}, priority="bulk",
                                            headers={"Auto-Submitted": "no", "precedence": "list"})
    run_burst(settings)
    msg = smtp.wait_for(1)[0].message
    assert msg.get_all("Auto-Submitted") == ["no"]
    assert msg.get_all("Precedence") == ["list"]
    assert len(msg.get_all("List-Id")) == 1


@pytest.mark.parametrize("char", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x7f"])
def test_control_characters_never_reach_a_header(settings: Settings, smtp: SmtpServer, char: str) -> None:
    n = Notifier(settings.beanstalk_url)
    in_header = n.notify("welcome", "z@example.com", {"name": "z"}, headers={"X-Tag": f"a{char}b"})
    in_subject = n.notify("welcome", "y@example.com", {"name": f"y{char}y"})
    run_burst(settings)
    store = Store(settings.store)
    for job in (in_header, in_subject):
        assert "control character" in store.failure(settings.beanstalk_url, job)[1]
    assert smtp.messages == []


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b"], ids=["nul", "lone surrogate"])
def test_text_no_mail_can_carry_is_refused_at_notify_saying_where(text: str) -> None:
    """NUL (RFC 5322 forbids it, PostgreSQL cannot store it) and a lone surrogate (bytes decoded
    wrongly) are refused by the producer, before any server is asked, not buried later."""
    n = Notifier("beanstalk://127.0.0.1:1")  # never reached
    for call in (lambda: n.notify("welcome", "z@example.com", {"name": text}),
                 lambda: n.notify("welcome", "z@example.com", {"name": "z"}, headers={"X-Tag": text}),
                 lambda: n.mailout("welcome", ["a@example.com"], {"name": text}, key="news-1")):
        with pytest.raises(env.EnvelopeError, match="NUL|surrogate") as refused:
            call()
        assert '"a' in str(refused.value)  # the text just before it, to find it by
    with pytest.raises(Exception) as other:  # the six characters \u0000 are text, not a NUL: they pass
        n.notify("welcome", "z@example.com", {"name": "a\\u0000b"})
    assert not isinstance(other.value, env.EnvelopeError)


# -- masking means every line -----------------------------------------------------------------------

def test_masked_logs_show_no_address_in_keys_replies_or_reasons(settings: Settings, smtp: SmtpServer) -> None:
    n = Notifier(settings.beanstalk_url)
    n.mailout("welcome", ["alice.secret@example.com", "reject.secret@example.com"], {"name": "x"}, key="news-1")
    env = bare_env(settings, BEANMAIL_TEMPLATES=str(ROOT / "templates"), BEANMAIL_MASK_ADDRESSES="true")
    out = beanmail("fanout", "--burst", env=env).stdout + beanmail("worker", "--burst", env=env).stdout
    smtp.wait_for(1)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(e.get("outcome") == "bounced" for e in events)
    assert "secret@" not in out, [line for line in out.splitlines() if "secret@" in line]
    assert any(e.get("key") == "news-1:a***@example.com" for e in events)


def test_unmasked_when_the_setting_says_so(settings: Settings, smtp: SmtpServer) -> None:
    Notifier(settings.beanstalk_url).notify("welcome", "reject.plain@example.com", {"name": "x"}, key="k:reject.plain@example.com")
    out = beanmail("worker", "--burst", env=bare_env(settings, BEANMAIL_MASK_ADDRESSES="false")).stdout
    assert "k:reject.plain@example.com" in out



def test_a_worker_started_while_its_store_is_unavailable_waits_for_it(settings: Settings, smtp: SmtpServer,
                                                                     tmp_path: Path) -> None:
    """Under supervisord an exit at once, again and again, ends in FATAL: the worker waits instead."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's folder should be")
    env = bare_env(settings, BEANMAIL_STORE=str(blocker / "store.sqlite3"))
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ROOT / ".venv/bin/beanmail"), "worker"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "store unavailable at start" in log.read_text(), 20, "the worker to say it waits")
        assert proc.poll() is None
        Notifier(settings.beanstalk_url).notify("welcome", "late@example.com", {"name": "late"}, key="late:1")
        blocker.unlink()
        smtp.wait_for(1, timeout=30)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_secrets_from_toml_lists_and_a_secret_naming_no_key(tmp_path: Path) -> None:
    from worker.settings import SettingsError, load

    (tmp_path / "b.toml").write_text('[beanmail]\nsecret = ["new", "old"]\n')
    assert load({}, path=str(tmp_path / "b.toml")).secret == "new,old"
    with pytest.raises(SettingsError, match="BEANMAIL_SECRET: names no key"):
        load({"BEANMAIL_SECRET": " , "})


def test_a_mailout_with_a_refused_header_buries_its_chunk_not_every_recipient(settings: Settings) -> None:
    n = Notifier(settings.beanstalk_url)
    [chunk] = n.mailout("welcome", [f"r{i}@example.com" for i in range(50)], {"name": "x"}, key="cc-1")
    with connect(settings.beanstalk_url, encoding=None) as c:  # a chunk written by hand, with a Cc header
        body = json.loads(c.peek(chunk).body)
        c.delete(chunk)
        body["headers"] = {"Cc": "boss@example.com"}
        c.use("mailout")
        job = c.put(json.dumps(body).encode())
    beanmail("fanout", "--burst", env=bare_env(settings))
    counts = tube_counts(settings)
    assert counts["buried"] == 1 and counts["ready"] == 0
    assert "header 'Cc' may not be set" in Store(settings.store).failure(settings.beanstalk_url, job)[1]


def test_every_setting_is_documented_with_its_variable_and_toml_key(settings: Settings) -> None:
    """docs/settings.md is made from worker/settings_doc.py: a new setting without a line fails here."""
    import dataclasses

    from worker.settings_doc import HELP, markdown

    assert [f.name for f in dataclasses.fields(Settings) if not HELP.get(f.name)] == []
    assert (ROOT / "docs" / "settings.md").read_text() == markdown(), "run: python -m worker.settings_doc > docs/settings.md"
    shown = json.loads(beanmail("settings", "--json", env=bare_env(settings, BEANMAIL_SECRET="s3cret")).stdout)
    by_var = {r["variable"]: r for r in shown}
    assert by_var["BEANMAIL_SECRET"]["value"] == "(set)" and by_var["BEANMAIL_FROM"]["toml"] == "from"
    assert by_var["BEANMAIL_TTR"]["value"] == str(settings.ttr)
