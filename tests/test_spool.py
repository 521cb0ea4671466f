"""The spool keeps its promise: a job the Notifier reported "spooled" (id 0) reaches beanstalkd
exactly once, whatever runs at the same time; what cannot go is set aside, never dropped."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from producer import Notifier
from producer import envelope as env
from producer import spool
from producer.client import Unreachable, connect

from .servers import Beanstalkd, free_port

ctx = multiprocessing.get_context("fork")


def drain(url: str) -> list[str]:
    """Every ready job's envelope id, taken out of beanstalkd."""
    ids = []
    with connect(url, encoding=None) as c:
        for tube in (*env.MAIL_TUBES, env.MAILOUT_TUBE):
            c.watch(tube)
        while True:
            try:
                job = c.reserve(0)
            except Exception:  # noqa: BLE001 - greenstalk.TimedOutError: none left
                return ids
            ids.append(env.decode(job.body).id)
            c.delete(job)


def _produce(path: str, tag: str, count: int, go: Any) -> None:
    dead = f"beanstalk://127.0.0.1:{free_port()}"  # nothing listens: every put is spooled
    notifier = Notifier(dead, spool=path, blobs="", timeout=1)
    go.wait()
    for i in range(count):
        if notifier.notify("welcome", f"{tag}-{i}@example.com", {"name": tag}, key=f"{tag}:{i}") != 0:
            os._exit(3)
    os._exit(0)


def _flush_loop(path: str, url: str, stop: Any, put: Any) -> None:
    notifier = Notifier(url, spool="", blobs="")
    total = 0
    while True:
        last = stop.is_set()
        total += spool.flush(path, notifier.put_body)
        if last:
            break
    with put.get_lock():
        put.value += total
    os._exit(0)


def spool_round(path: str, url: str, producers: int = 4, lines: int = 150) -> tuple[int, list[str], int]:
    """Producers append while two flushers (a worker start, a cron flush) loop: returns the lines
    appended, the ids that arrived in beanstalkd, and what the flushers counted as put."""
    go, stop, put = ctx.Event(), ctx.Event(), ctx.Value("l", 0)
    flushers = [ctx.Process(target=_flush_loop, args=(path, url, stop, put)) for _ in range(2)]
    makers = [ctx.Process(target=_produce, args=(path, f"p{n}", lines, go)) for n in range(producers)]
    for p in flushers + makers:
        p.start()
    go.set()
    for p in makers:
        p.join(60)
        assert p.exitcode == 0, "a producer failed to spool"
    stop.set()
    for p in flushers:
        p.join(60)
        assert p.exitcode == 0
    counted = put.value + spool.flush(path, Notifier(url, spool="", blobs="").put_body)
    return producers * lines, drain(url), counted


def test_appenders_and_two_flushers_at_once_lose_nothing_and_put_nothing_twice(beanstalkd: Beanstalkd,
                                                                              tmp_path: Path) -> None:
    path = str(tmp_path / "spool" / "beanmail.spool")
    for round_ in range(3):
        appended, arrived, counted = spool_round(path, beanstalkd.url)
        copies = Counter(arrived)
        assert len(copies) == appended, f"round {round_}: {appended - len(copies)} line(s) lost"
        assert max(copies.values()) == 1, f"round {round_}: put twice: {[k for k, n in copies.items() if n > 1][:5]}"
        assert counted == appended
    assert sorted(os.listdir(tmp_path / "spool")) == []  # no aside file, no rejects left behind


def _line(tube: str, body: bytes) -> bytes:
    return (json.dumps({"tube": tube, "pri": 1024, "delay": 0, "ttr": 60,
                        "body": base64.b64encode(body).decode()}) + "\n").encode()


def _job(key: str, size: int = 0) -> bytes:
    return env.encode(env.Envelope(kind="mail", id=key, to=(env.Recipient(f"{key}@example.com"),),
                                   template="welcome", context={"pad": "x" * size}, created_at=env.now()))


def test_a_job_too_big_for_beanstalkd_is_rejected_once_and_blocks_nothing(beanstalkd: Beanstalkd, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "beanmail.spool")
    dead = Notifier(f"beanstalk://127.0.0.1:{free_port()}", spool=path, blobs="")
    dead.notify("welcome", "a@example.com", {"name": "A"}, key="a")
    dead.notify("welcome", "big@example.com", {"pad": "x" * 2_000_000}, key="big")  # no blob store
    dead.notify("welcome", "c@example.com", {"name": "C"}, key="c")
    notifier = Notifier(beanstalkd.url, spool="", blobs="")
    with caplog.at_level(logging.ERROR, logger="beanmail.producer"):
        assert spool.flush(path, notifier.put_body) == 2
    assert "1 spooled job(s) too big for beanstalkd" in caplog.text
    assert spool.flush(path, notifier.put_body) == 0
    assert spool.flush(path, notifier.put_body) == 0
    assert sorted(drain(beanstalkd.url)) == ["a", "c"]  # each once, however many flushes
    [rejected] = Path(f"{path}.rejects").read_bytes().splitlines()
    assert env.decode(base64.b64decode(json.loads(rejected)["body"])).id == "big"
    dead.notify("welcome", "d@example.com", {"name": "D"}, key="d")  # the spool still moves
    assert spool.flush(path, notifier.put_body) == 1 and drain(beanstalkd.url) == ["d"]


def test_damaged_lines_go_to_the_rejects_file_with_a_logged_count(beanstalkd: Beanstalkd, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "beanmail.spool"
    damaged = [b'{"tube": "mail.normal", "pri": 10\n', b'{"tube": "mail.normal", "pri": 1, "delay": 0, "ttr": 60, '
               b'"body": "not base64!"}\n']
    torn = _line("mail.normal", _job("torn"))[:40]  # the last append of a process that died
    path.write_bytes(_line("mail.normal", _job("one")) + damaged[0] + _line("mail.urgent", _job("two"))
                     + damaged[1] + _line("mail.bulk", _job("three")) + torn)
    # a producer appends after the torn line: its job stays whole
    Notifier(f"beanstalk://127.0.0.1:{free_port()}", spool=str(path), blobs="").notify(
        "welcome", "four@example.com", {"name": "x"}, key="four")
    with caplog.at_level(logging.ERROR, logger="beanmail.producer"):
        assert spool.flush(str(path), Notifier(beanstalkd.url, spool="", blobs="").put_body) == 4
    assert "3 damaged spool line(s) moved to" in caplog.text
    assert sorted(drain(beanstalkd.url)) == ["four", "one", "three", "two"]
    assert Path(f"{path}.rejects").read_bytes() == damaged[0] + damaged[1] + torn + b"\n"
    assert not path.exists()


def test_beanstalkd_dying_mid_flush_keeps_the_jobs_not_yet_put(beanstalkd: Beanstalkd, tmp_path: Path) -> None:
    path = str(tmp_path / "beanmail.spool")
    dead = Notifier(f"beanstalk://127.0.0.1:{free_port()}", spool=path, blobs="")
    for i in range(10):
        dead.notify("welcome", f"u{i}@example.com", {"name": "x"}, key=f"k{i}")
    notifier = Notifier(beanstalkd.url, spool="", blobs="", timeout=2)
    calls = 0

    def put(*job: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 5:
            beanstalkd.stop()  # dies with four jobs put (they stay in its binlog)
        return notifier.put_body(*job)

    with pytest.raises(Unreachable):
        spool.flush(path, put)
    [aside] = [p for p in tmp_path.iterdir() if ".flushing-" in p.name]
    assert len(aside.read_bytes().splitlines()) == 6  # rewritten: only what is left
    with pytest.raises(Unreachable):  # still down: kept again, nothing dropped
        spool.flush(path, notifier.put_body)
    dead.notify("welcome", "late@example.com", {"name": "x"}, key="late")  # appended meanwhile
    beanstalkd.start()
    assert spool.flush(path, notifier.put_body) == 7
    assert sorted(drain(beanstalkd.url)) == sorted([f"k{i}" for i in range(10)] + ["late"])
    assert [p.name for p in tmp_path.iterdir() if "spool" in p.name] == []
