"""The contract of the one beanstalkd adapter (producer/beanstalk.py) with the installed
greenstalk: the private names it relies on exist, and its pipelined commands speak the protocol
right against a real beanstalkd. A greenstalk release that changes them fails here first."""

from __future__ import annotations

from importlib.metadata import version

import greenstalk
import pytest

from producer import beanstalk
from producer.client import connect

from .servers import Beanstalkd


def test_greenstalk_is_within_the_pinned_range_and_has_what_the_adapter_uses() -> None:
    major = int(version("greenstalk").split(".")[0])
    assert major == 2, "setup.py pins greenstalk>=2,<3; check producer/beanstalk.py before moving the pin"
    assert callable(greenstalk._parse_response)
    client_attrs = greenstalk.Client.__init__.__code__.co_names
    assert {"_sock", "_reader"} <= set(client_attrs)
    assert callable(greenstalk.Client._read_chunk)


def test_a_pipelined_batch_of_puts_switches_tubes_and_returns_every_id(beanstalkd: Beanstalkd) -> None:
    client = connect(beanstalkd.url, encoding=None)
    jobs = [("mail.bulk", 4096, b"a"), ("mail.bulk", 4096, b"b"), ("mail.urgent", 100, b"c")]
    ids, using = beanstalk.put_batch(client, jobs, 60, "default")
    assert len(ids) == 3 and len(set(ids)) == 3 and using == "mail.urgent"
    assert client.stats_job(ids[2])["tube"] == "mail.urgent" and client.peek(ids[0]).body == b"a"
    with pytest.raises(beanstalk.BatchRefused):  # a body beanstalkd refuses: the reply says so
        beanstalk.put_batch(client, [("mail.bulk", 1, b"x" * 70_000)], 60, using)


def test_delete_rides_with_the_next_reserve(beanstalkd: Beanstalkd) -> None:
    client = connect(beanstalkd.url, encoding=None, watch=["t"], use="t")
    first, second = client.put(b"one"), client.put(b"two")
    job = client.reserve(timeout=1)
    assert job.id == first
    [nxt] = beanstalk.reserve_batch(client, [job.id], 1, 1)
    assert (nxt.id, nxt.body) == (second, b"two")
    with pytest.raises(greenstalk.NotFoundError):
        client.stats_job(first)
    assert beanstalk.reserve_batch(client, [nxt.id], 0, 1) == []  # nothing left: the reserve's own reply comes through


def test_fleet_urls_are_checked_one_by_one() -> None:
    assert beanstalk.split_urls(" beanstalk://a:1 , unix:///run/b.sock ") == ["beanstalk://a:1", "unix:///run/b.sock"]
    with pytest.raises(ValueError, match="redis://x"):
        beanstalk.split_urls("beanstalk://a:1,redis://x")
