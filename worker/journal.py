"""The keys a worker sent and has not yet recorded in the store.

A batch's outcomes are committed together after its last send; a worker killed between a send
and that commit would leave the key claimed but unrecorded, and the next worker would send it
again. So each key goes into this process's journal right after the server's final ``250``: one
``write`` to a file (it survives a ``kill -9``: the data is in the kernel's page cache, not in
the process), emptied when the batch is committed. A worker that finds a claim held by a dead
process of its host reads that process's journal before it sends; a worker starting up records
the journals of dead processes into the store and removes them.

Where: beside a SQLite store (``<store>.journal/``), in the temporary folder for PostgreSQL. A
power loss loses the page cache, and with it the journal: the batch may go again then.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable
from urllib.parse import quote, unquote

from .logs import get_logger


def directory_for(location: str) -> Path:
    if "://" in location:
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"beanmail-journal-{os.getuid()}-{digest}"
    if location == ":memory:":
        return Path(tempfile.gettempdir()) / f"beanmail-journal-{os.getuid()}-memory-{os.getpid()}"
    return Path(location + ".journal")


class Journal:
    def __init__(self, location: str, holder: str) -> None:
        self.dir = directory_for(location)
        self.holder = holder
        self._fd: int | None = None
        self._failed = False
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def _path(self, holder: str) -> Path:
        return self.dir / quote(holder, safe="")

    @property
    def pending(self) -> set[str]:
        """Keys this process sent whose outcome the store has not committed yet."""
        return self._pending

    def sent(self, key: str) -> None:
        """Called after the final 250. A journal that cannot be written (a full disk) costs only
        the protection it gives against a kill: logged once, never the delivery's outcome."""
        try:
            with self._lock:  # the event loop's thread writes here too (worker/flight.py)
                if self._fd is None:
                    self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    self._fd = os.open(self._path(self.holder), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC,
                                       0o600)
                self._pending.add(key)
                os.write(self._fd, quote(key, safe="").encode("ascii") + b"\n")
        except OSError as exc:
            if not self._failed:
                self._failed = True
                get_logger().warning("journal not written: a worker killed now may send its batch again",
                                     journal=str(self.dir), error=str(exc))

    def recorded(self, keys: Iterable[str]) -> None:
        """The store committed these keys' outcomes: they leave the journal (the file is emptied,
        or rewritten with what is still unrecorded after a failed commit)."""
        with self._lock:
            written = bool(self._pending)  # the file holds a line for each pending key
            self._pending.difference_update(keys)
            if written and self._fd is not None:
                try:
                    os.ftruncate(self._fd, 0)
                    if self._pending:
                        os.write(self._fd, b"".join(quote(k, safe="").encode("ascii") + b"\n" for k in self._pending))
                except OSError:
                    pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if not self._pending:
                self._path(self.holder).unlink(missing_ok=True)

    def of(self, holder: str) -> set[str]:
        """The keys another process's journal holds (empty when it has none)."""
        try:
            data = self._path(holder).read_bytes()
        except OSError:
            return set()
        return {unquote(line.decode("ascii", "replace")) for line in data.splitlines() if line}

    def others(self) -> list[str]:
        """The holders whose journals lie here, this process's aside."""
        try:
            names = [unquote(p.name) for p in self.dir.iterdir()]
        except OSError:
            return []
        return [h for h in names if h != self.holder]

    def remove(self, holder: str) -> None:
        self._path(holder).unlink(missing_ok=True)
