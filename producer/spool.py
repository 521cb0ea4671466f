"""A local spool for jobs beanstalkd could not take: one JSON line per job, appended with an
exclusive lock and fsync, so a notification survives a beanstalkd outage and a crash."""

from __future__ import annotations

import base64
import fcntl
import glob
import json
import os
from pathlib import Path
from typing import Callable


def append(path: str, tube: str, priority: int, delay: int, ttr: int, body: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"tube": tube, "pri": priority, "delay": delay, "ttr": ttr,
                       "body": base64.b64encode(body).decode("ascii")}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def flush(path: str, put: Callable[[str, int, int, int, bytes], object]) -> int:
    """Hand every spooled job to ``put(tube, pri, delay, ttr, body)``; returns how many.

    The spool is renamed aside first, so producers keep appending to a fresh file meanwhile; a
    flush that dies halfway leaves its file for the next flush. A job put twice that way is
    harmless: its idempotency key makes the worker skip the second copy.
    """
    count = 0
    if os.path.exists(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for an append in progress
            aside = f"{path}.flushing-{os.getpid()}"
            os.rename(path, aside)
        finally:
            os.close(fd)
    for aside in sorted(glob.glob(f"{glob.escape(path)}.flushing-*")):
        with open(aside, "rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                try:
                    job = json.loads(raw)
                    body = base64.b64decode(job["body"])
                except (ValueError, KeyError):
                    continue  # a torn last line of a crashed append: nothing was promised for it
                put(job["tube"], int(job["pri"]), int(job["delay"]), int(job["ttr"]), body)
                count += 1
        os.unlink(aside)
    return count
