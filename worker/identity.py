"""Who this worker process is, in the store and on disk.

``host_name``: the name this worker host goes by in the store (the registry, ``beanmail workers
disable HOST``): the machine's host name unless BEANMAIL_HOST_NAME says otherwise (hosts that
share one, such as containers or network namespaces of one machine).

``process_id``: ``host:pid:instance``, the identity of this process run. The pid alone names
nobody in containers (every worker is pid 1 of its own namespace, on every host and after every
restart), so a random instance id drawn when the process starts makes each run unique: claims
(``process_id:n``), journals and the registry all carry it, and a restarted worker is never
taken for the one that died."""

from __future__ import annotations

import os
import secrets
import socket

_name = socket.gethostname()
_instance: tuple[int, str] = (0, "")


def host_name() -> str:
    return _name


def configure(name: str) -> None:
    global _name
    _name = name or socket.gethostname()


def instance() -> str:
    """Random, drawn once per process (again in a forked child)."""
    global _instance
    pid = os.getpid()
    if _instance[0] != pid:
        _instance = (pid, secrets.token_hex(4))
    return _instance[1]


def process_id() -> str:
    return f"{host_name()}:{os.getpid()}:{instance()}"


def process_of(holder: str) -> str:
    """The process id of a claim holder (``process_id:n``)."""
    return holder.rpartition(":")[0]
