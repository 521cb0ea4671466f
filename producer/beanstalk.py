"""The one adapter to beanstalkd beyond greenstalk's public API: sockets with timeouts and the
pipelined commands greenstalk does not offer (a batch of puts, deletes riding with the next
reservations). Only this module touches greenstalk's private names; ``tests/test_beanstalk.py`` checks
them against the installed greenstalk, which setup.py pins below 3."""

from __future__ import annotations

import socket
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import greenstalk

CONNECTION_ERRORS = (OSError, greenstalk.UnknownResponseError, EOFError)


def parse_url(url: str) -> str | tuple[str, int]:
    """``beanstalk://host:port`` or ``unix:///path`` -> a greenstalk address."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"beanstalkd URL {url!r} has no socket path")
        return parts.path
    if parts.scheme not in ("beanstalk", "beanstalkd", "tcp"):
        raise ValueError(f"beanstalkd URL {url!r} must be beanstalk://host:port or unix:///path")
    return (parts.hostname or "127.0.0.1", parts.port or 11300)


def split_urls(value: str) -> list[str]:
    """A comma-separated list of beanstalkd URLs (a fleet), each checked."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("no beanstalkd URL given")
    for url in urls:
        parse_url(url)
    return urls


def connect(url: str, timeout: float | None = 10.0, *, connect_timeout: float | None = None,
            **kwargs: Any) -> greenstalk.Client:
    """A greenstalk client on a socket with timeouts (greenstalk itself sets none).
    ``connect_timeout`` bounds only the connection: short, so a producer fails over fast."""
    address = parse_url(url)
    first = connect_timeout if connect_timeout is not None else timeout
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(first)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(address, timeout=first)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.settimeout(timeout)
    try:
        return greenstalk.Client(sock, **kwargs)
    except Exception:
        sock.close()
        raise


class BatchRefused(Exception):
    """beanstalkd answered a pipelined command with something else than expected."""


def put_batch(client: greenstalk.Client, jobs: Iterable[tuple[str, int, bytes]], ttr: int,
              using: str) -> tuple[list[int], str]:
    """``(tube, priority, body)`` puts in one write, their replies read in order. Returns the job
    ids and the tube the connection now uses."""
    out, expect = bytearray(), []
    for tube, pri, body in jobs:
        if tube != using:
            out += b"use %s\r\n" % tube.encode()
            expect.append(b"USING")
            using = tube
        out += b"put %d 0 %d %d\r\n%s\r\n" % (pri, ttr, len(body), body)
        expect.append(b"INSERTED")
    client._sock.sendall(out)
    ids = []
    for want in expect:
        words = client._reader.readline().split()
        if not words or words[0] != want:
            raise BatchRefused(f"beanstalkd answered {b' '.join(words).decode() or 'nothing'!r} to a put")
        if want == b"INSERTED":
            ids.append(int(words[1]))
    return ids, using


def reserve_batch(client: greenstalk.Client, deletes: Sequence[int], timeout: int,
                  count: int) -> list[greenstalk.Job]:
    """Deletes, then up to ``count`` reservations, in one write, their replies read in order: the
    first reservation waits up to ``timeout`` seconds for a job, the others take only what is ready
    then. An empty list when nothing came. A job deleted here that is gone (its TTR ran out and
    someone else holds it) is no error."""
    out = bytearray()
    for job_id in deletes:
        out += b"delete %d\r\n" % job_id
    out += b"reserve-with-timeout %d\r\n" % timeout
    out += b"reserve-with-timeout 0\r\n" * (count - 1)
    client._sock.sendall(out)
    for _ in deletes:
        deleted = client._reader.readline()
        if deleted not in (b"DELETED\r\n", b"NOT_FOUND\r\n"):
            raise greenstalk.UnknownResponseError(deleted.strip(), [])
    jobs = []
    for _ in range(count):
        line = client._reader.readline()
        if line in (b"TIMED_OUT\r\n", b"DEADLINE_SOON\r\n"):
            continue  # DEADLINE_SOON: a job this connection holds is near its TTR; the caller touches it
        job_id, size = (int(n) for n in greenstalk._parse_response(line, b"RESERVED"))
        jobs.append(greenstalk.Job(job_id, client._read_chunk(size)))
    return jobs


def delete_many(client: greenstalk.Client, job_ids: Sequence[int]) -> None:
    """Deletes in one write (those already gone are no error)."""
    if not job_ids:
        return
    client._sock.sendall(b"".join(b"delete %d\r\n" % j for j in job_ids))
    for _ in job_ids:
        deleted = client._reader.readline()
        if deleted not in (b"DELETED\r\n", b"NOT_FOUND\r\n"):
            raise greenstalk.UnknownResponseError(deleted.strip(), [])
