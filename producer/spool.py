"""A local spool for jobs beanstalkd could not take: one JSON line per job, appended with an
exclusive lock and fsync, so a notification survives a beanstalkd outage and a crash.

Many producer processes append while flushes (every worker start, a cron ``beanmail spool
flush``) run at once, so the protocol is built from two rules:

- a flush renames the spool aside while holding its lock; an appender that obtained the lock
  on a file that was meanwhile renamed aside notices (the inode it holds is no longer the one
  at the path) and reopens, so no line is ever written to a file nobody will read again;
- each aside file is processed under its own lock, taken without waiting: two flushers never
  both put the same file's jobs, and a file that was finished or rewritten is recognised by
  its inode and left alone.

A line that cannot be read, or a job beanstalkd refuses for good (too big), is moved to
``<spool>.rejects`` for a person to look at; it neither vanishes nor blocks the jobs behind it.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import glob
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger("beanmail.producer")

_sequence = itertools.count()


def append(path: str, tube: str, priority: int, delay: int, ttr: int, body: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({"tube": tube, "pri": priority, "delay": delay, "ttr": ttr,
                        "body": base64.b64encode(body).decode("ascii")}) + "\n").encode()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _is_current(fd, path):
                continue  # renamed aside while we waited for the lock: append to the new spool
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                _write_all(fd, b"\n" + line)  # after a torn line (a crashed append): keep ours whole
            else:
                _write_all(fd, line)
            os.fsync(fd)
            return
        finally:
            os.close(fd)


def _is_current(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is still the one at ``path`` (not renamed, not replaced)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flush(path: str, put: Callable[[str, int, int, int, bytes], object]) -> int:
    """Hand every spooled job to ``put(tube, pri, delay, ttr, body)``; returns how many were put.

    ``put`` raising ``JobTooBig`` sets that job aside in the rejects file; anything else it
    raises (``Unreachable``: beanstalkd gone) keeps every job not yet put and is raised. A flush that dies
    halfway leaves its aside file for the next flush, which puts its jobs again: harmless, since
    the idempotency key makes the worker skip a second copy.
    """
    _set_aside(path)
    count = 0
    for aside in sorted(glob.glob(f"{glob.escape(path)}.flushing-*")):
        if aside.endswith(".tmp"):
            continue
        count += _flush_file(aside, path, put)
    return count


def _set_aside(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for an append in progress
        if not _is_current(fd, path):
            return  # another flusher set it aside first; its aside file is globbed below
        if os.fstat(fd).st_size == 0:
            return
        # sortable: older aside files (and their jobs) go first
        os.rename(path, f"{path}.flushing-{time.time_ns():020d}-{os.getpid()}-{next(_sequence)}")
        _fsync_dir(path)
    finally:
        os.close(fd)


def _flush_file(aside: str, path: str, put: Callable[[str, int, int, int, bytes], object]) -> int:
    from .client import JobTooBig

    try:
        fh = open(aside, "rb")
    except FileNotFoundError:
        return 0  # another flusher finished it
    count = 0
    damaged = too_big = 0
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another flusher is on it
        if not _is_current(fh.fileno(), aside):
            return 0  # finished (unlinked) or rewritten by another flusher meanwhile
        while True:
            start = fh.tell()
            raw = fh.readline()
            if not raw:
                break
            if not raw.strip():
                continue
            try:
                job = json.loads(raw)
                tube, pri, delay, ttr = str(job["tube"]), int(job["pri"]), int(job["delay"]), int(job["ttr"])
                body = base64.b64decode(job["body"], validate=True)
            except (ValueError, KeyError, TypeError, binascii.Error):
                _reject(path, raw)  # a torn line of a crashed append, or damage on disk
                damaged += 1
                continue
            try:
                put(tube, pri, delay, ttr, body)
            except JobTooBig as exc:
                _reject(path, raw)
                too_big += 1
                log.error("spooled job refused for good, moved to %s.rejects: %s", path, exc)
                continue
            except BaseException:  # beanstalkd gone (Unreachable), or interrupted: keep what is left
                _keep_rest(fh, start, aside)
                _report(path, damaged, too_big)
                raise
            count += 1
        os.unlink(aside)  # under the lock: a flusher that opened it meanwhile sees it gone
        _fsync_dir(aside)
    _report(path, damaged, too_big)
    return count


def _keep_rest(fh: BinaryIO, start: int, aside: str) -> None:
    """Atomically replace the aside file by its lines from ``start`` on (the jobs not yet put)."""
    tmp = f"{aside}.tmp"
    fh.seek(start)
    with open(tmp, "wb", opener=lambda name, flags: os.open(name, flags, 0o600)) as out:  # mail is private
        while chunk := fh.read(1 << 20):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, aside)
    _fsync_dir(aside)


def _reject(path: str, raw: bytes) -> None:
    line = raw if raw.endswith(b"\n") else raw + b"\n"
    fd = os.open(f"{path}.rejects", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _report(path: str, damaged: int, too_big: int) -> None:
    if damaged:
        log.error("%d damaged spool line(s) moved to %s.rejects", damaged, path)
    if too_big:
        log.error("%d spooled job(s) too big for beanstalkd moved to %s.rejects", too_big, path)
