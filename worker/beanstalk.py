"""The one adapter to beanstalkd beyond greenstalk's public API: pipelined commands, which
greenstalk does not offer. Only this module touches greenstalk's private names, and
``tests/test_beanstalk.py`` checks them against the pinned greenstalk versions."""

from __future__ import annotations

import greenstalk

CONNECTION_ERRORS = (OSError, greenstalk.UnknownResponseError, EOFError)


def delete_and_reserve(client: greenstalk.Client, job_id: int, timeout: int) -> greenstalk.Job:
    """``delete`` and ``reserve-with-timeout`` in one write, their replies read in order."""
    client._sock.sendall(b"delete %d\r\nreserve-with-timeout %d\r\n" % (job_id, timeout))
    deleted = client._reader.readline()
    if deleted not in (b"DELETED\r\n", b"NOT_FOUND\r\n"):  # NOT_FOUND: its TTR ran out meanwhile
        raise greenstalk.UnknownResponseError(deleted.strip(), [])
    job_id_, size = (int(n) for n in greenstalk._parse_response(client._reader.readline(), b"RESERVED"))
    return greenstalk.Job(job_id_, client._read_chunk(size))
