"""The keys a worker is ending or has sent and not yet recorded in the store.

A batch's outcomes are committed together after its last send; a worker killed between a send
and that commit would leave the key claimed but unrecorded, and the next worker would send it
again. So each message leaves two lines in this process's journal: ``?key`` just before the end
of its data is written (from here a kill leaves the server maybe holding it: *in doubt*), and
``key`` right after the server's final ``250`` (sent). Each is one ``write`` to a file (it
survives a ``kill -9``: the data is in the kernel's page cache, not in the process); the file
is emptied when the batch is committed.

A journal is named by its process's id (``host:pid:instance:n``, worker/identity.py), and its
process holds an exclusive ``flock`` on it while it lives: a journal whose lock can be taken
belongs to a dead process, whatever its pid (in containers every worker is pid 1). A worker
that meets a claim of a dead holder reads the holder's journal before it sends: a ``key`` line
is recorded sent, a lone ``?key`` line in doubt (retried after BEANMAIL_IN_DOUBT_DELAY, never
at once). A worker starting up records the journals of dead processes and removes them.

The journal is part of the promise, not an extra: a worker whose journal folder cannot be
written does not start (``JournalUnwritable``), and a message whose ``?key`` line cannot be
written is not sent (the job is deferred as an outage).

Where: beside a SQLite store (``<store>.journal/``), in the temporary folder for PostgreSQL. A
power loss loses the page cache, and with it the journal: the batch may go again then.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable
from urllib.parse import quote, unquote

from .logs import get_logger

# what a folder nobody can fix by waiting answers (permissions, read-only, not a folder);
# a full disk or an I/O error is an outage: waited out
_CONFIG_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ELOOP, errno.EISDIR}


class JournalUnwritable(Exception):
    """The journal's folder cannot be written: a worker must not run without it (exit 78)."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"journal folder {path} cannot be written: {error.strerror or error}")
        self.path = path


def directory_for(location: str) -> Path:
    if "://" in location:
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"beanmail-journal-{os.getuid()}-{digest}"
    if location == ":memory:":
        return Path(tempfile.gettempdir()) / f"beanmail-journal-{os.getuid()}-memory-{os.getpid()}"
    return Path(location + ".journal")


def _line(key: str, ending: bool = False) -> bytes:
    return (b"?" if ending else b"") + quote(key, safe="").encode("ascii") + b"\n"


class Journal:
    def __init__(self, location: str, holder: str) -> None:
        self.dir = directory_for(location)
        self.holder = holder
        self._fd: int | None = None
        self._failed = False
        self._pending: set[str] = set()  # sent, not recorded
        self._ending: set[str] = set()  # the end of data written (or about to be), not recorded
        self._dirty = False  # the file holds lines
        self._lock = threading.Lock()

    def _path(self, holder: str) -> Path:
        return self.dir / quote(holder, safe="")

    @property
    def pending(self) -> set[str]:
        """Keys this process sent whose outcome the store has not committed yet."""
        return self._pending

    def start(self) -> None:
        """Open (create) this process's journal and take its lock. Raises JournalUnwritable when
        the folder cannot be written for good, OSError for what may pass (a full disk)."""
        with self._lock:
            self._open()

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._path(self.holder), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
        except OSError as exc:
            if exc.errno in _CONFIG_ERRNOS:
                raise JournalUnwritable(self.dir, exc) from exc
            raise
        fcntl.flock(fd, fcntl.LOCK_EX)  # held while this process lives: the sign it does
        self._fd = fd
        return fd

    def ending(self, key: str) -> None:
        """Called just before the end of the data is written. Raises (OSError, JournalUnwritable)
        when the line cannot be written: the message must not go then."""
        with self._lock:
            fd = self._open()
            os.write(fd, _line(key, ending=True))
            self._ending.add(key)
            self._dirty = True

    def sent(self, key: str) -> None:
        """Called after the final 250. The message went; a journal that cannot take the line
        now (a full disk) is logged once: its ``?key`` line makes the key in doubt, not resent."""
        try:
            with self._lock:  # the event loop's thread writes here too (worker/flight.py)
                fd = self._open()
                self._pending.add(key)
                self._dirty = True
                os.write(fd, _line(key))
        except (OSError, JournalUnwritable) as exc:
            if not self._failed:
                self._failed = True
                get_logger().error("journal line not written: a kill now makes the key in doubt",
                                   journal=str(self.dir), error=str(exc))

    def settled(self, key: str) -> None:
        """The send ended without the server taking it (refused, never written): not in doubt."""
        with self._lock:
            self._ending.discard(key)

    def recorded(self, keys: Iterable[str]) -> None:
        """The store committed these keys' outcomes: they leave the journal (the file is emptied,
        or rewritten with what is still unrecorded after a failed commit)."""
        with self._lock:
            keys = set(keys)
            self._pending -= keys
            self._ending -= keys
            if self._dirty and self._fd is not None:
                try:
                    os.ftruncate(self._fd, 0)
                    lines = [_line(k, ending=True) for k in self._ending] + [_line(k) for k in self._pending]
                    if lines:
                        os.write(self._fd, b"".join(lines))
                    self._dirty = bool(lines)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                if not self._pending and not self._ending:
                    self._path(self.holder).unlink(missing_ok=True)
                os.close(self._fd)  # the lock goes with it
                self._fd = None

    def read(self, holder: str) -> tuple[set[str], set[str]]:
        """Another process's journal: (the keys it sent, the keys whose end of data it wrote
        with no reply recorded). Both empty when it has none."""
        try:
            data = self._path(holder).read_bytes()
        except OSError:
            return set(), set()
        sent, ending = set(), set()
        for line in data.splitlines():
            text = line.decode("ascii", "replace")
            if text.startswith("?"):
                ending.add(unquote(text[1:]))
            elif text:
                sent.add(unquote(text))
        return sent, ending - sent

    def of(self, holder: str) -> set[str]:
        """The keys another process's journal says were sent."""
        return self.read(holder)[0]

    def is_dead(self, holder: str) -> bool:
        """True when ``holder``'s journal lies here and no process holds its lock: it died (or
        ended without removing it). False when it lives, or its journal is not here to tell."""
        if holder == self.holder:
            return False
        try:
            fd = os.open(self._path(holder), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # locked: its process lives
        finally:
            os.close(fd)  # and with it the lock taken to ask
        return True

    def others(self) -> list[str]:
        """The holders whose journals lie here, this process's aside."""
        try:
            names = [unquote(p.name) for p in self.dir.iterdir()]
        except OSError:
            return []
        return [h for h in names if h != self.holder]

    def remove(self, holder: str) -> None:
        with contextlib.suppress(OSError):
            self._path(holder).unlink()
