"""The name this worker host goes by in the store: claims (``host:pid:n``), the registry and
``beanmail workers disable HOST`` all use it. The machine's host name unless BEANMAIL_HOST_NAME
says otherwise (hosts that share one, such as containers or network namespaces of one machine)."""

from __future__ import annotations

import socket

_name = socket.gethostname()


def host_name() -> str:
    return _name


def configure(name: str) -> None:
    global _name
    _name = name or socket.gethostname()
