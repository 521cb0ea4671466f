"""Relays by priority (worker/relays), over fakes: the failover choice, AIMD pacing of bulk and the
queue's high-water mark. The real Postfix relay is in test_relays.py."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest

from producer.envelope import Envelope, Recipient
from worker.outcomes import Backoff, Deferred, InDoubt, Outage, disposition
from worker.relays import board
from worker.relays.book import RelayBook
from worker.relays.pace import Pace
from worker.relays.plan import RelayPlan
from worker.relays.queue import QueueUnreadable, parse_queue_output
from worker.relays.transport import FailoverTransport
from worker.settings import Settings, SettingsError, load
from worker.store import Store
from worker.transports.smtp import Reply

A, B, U = "smtp://a.example:25", "smtp://b.example:25", "smtp://urgent.example:25"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pauses:
    """Stands for the pause of mail.bulk on beanstalkd."""

    def __init__(self) -> None:
        self.count = 0

    def hold(self) -> None:
        self.count += 1


class FakeSession:
    """A relay that answers what it is told: a Reply, or an Outcome to raise."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.answer: Reply | Exception = Reply(250, "ok")

    def send(self, sender: str, recipients: Sequence[str], message: bytes, touch: Callable[[], None] = lambda: None,
             before_end: Callable[[], None] | None = None) -> Reply:
        self.log.append(self.name)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def send_many(self, items, touch, done, before_end=None) -> None:  # noqa: ANN001
        for i in range(len(items)):
            self.log.append(self.name)
            done(i, self.answer)

    def close(self) -> None:
        pass


def transport(clock: Clock, **settings: object) -> tuple[FailoverTransport, dict[str, FakeSession], list[str]]:
    s = Settings(smtp_url=f"{A},{B}", relay_retry_after=30, **settings)  # type: ignore[arg-type]
    t = FailoverTransport(s, RelayBook(s, clock=clock, pause=Pauses()))
    log: list[str] = []
    fakes = {name: FakeSession(name.split("//")[1].split(".")[0], log) for name in t.sessions}
    t.sessions.update(fakes)
    for route in t._routes.values():
        route.sessions = t.sessions
    return t, fakes, log


def send(t: FailoverTransport, priority: str = "normal") -> Reply:
    return t.route(priority).send("s@x.example", ["r@y.example"], b"m")


def test_a_list_is_tried_in_order_and_a_dead_relay_is_skipped_then_tried_again() -> None:
    clock = Clock()
    t, fakes, log = transport(clock)
    a, b = fakes[A], fakes[B]
    assert send(t).code == 250 and log == ["a"]
    a.answer = Outage("cannot connect to a.example:25: ConnectionRefusedError")
    assert send(t).code == 250 and log[1:] == ["a", "b"]  # refused: the next relay took it, in the same send
    assert send(t).code == 250 and log[3:] == ["b"]  # skipped while dead
    clock.now += 29
    send(t)
    assert log[4:] == ["b"]
    a.answer = Reply(250, "ok")
    clock.now += 2  # its skip ended: tried first again
    send(t)
    assert log[5:] == ["a"]


def test_421_fails_over_but_another_4xx_or_a_message_in_doubt_does_not() -> None:
    clock = Clock()
    t, fakes, log = transport(clock)
    fakes[A].answer = Deferred("greeting refused", reply="421 4.3.2 shutting down")
    assert send(t).code == 250 and log == ["a", "b"]
    clock.now += 31
    fakes[A].answer = Deferred("recipient refused", reply="451 4.3.0 try later")
    with pytest.raises(Deferred, match="recipient refused"):
        send(t)
    fakes[A].answer = InDoubt("no reply to the end of data")  # it may have taken it: never a second relay
    with pytest.raises(InDoubt):
        send(t)
    assert log[2:] == ["a", "a"]


def test_every_relay_down_is_an_outage_that_costs_no_retry_and_all_are_tried_again() -> None:
    clock = Clock()
    t, fakes, log = transport(clock)
    for fake in fakes.values():
        fake.answer = Outage("cannot connect: timed out")
    with pytest.raises(Outage) as raised:
        send(t)
    assert disposition(raised.value, 8, Backoff(max_attempts=3)).free  # waited out, never exhausted
    fakes[B].answer = Reply(250, "ok")
    assert send(t).code == 250  # nothing up: every relay tried anyway, a relay back early found at once
    assert log == ["a", "b", "a", "b"]


def test_urgent_and_bulk_have_their_own_relays_and_fall_back_to_the_common_list() -> None:
    clock = Clock()
    t, fakes, log = transport(clock, smtp_url_urgent=U, smtp_url_bulk=B)
    plan = RelayPlan.from_settings(t.book.settings)
    assert [str(x.host) for x in plan.routes["urgent"]] == ["urgent.example", "a.example", "b.example"]
    assert [str(x.host) for x in plan.routes["bulk"]] == ["b.example", "a.example"]
    assert [str(x.host) for x in plan.routes["normal"]] == ["a.example", "b.example"]
    send(t, "urgent"), send(t, "bulk"), send(t, "normal")
    assert log == ["urgent", "b", "a"]
    fakes[U].answer = Outage("cannot connect")
    send(t, "urgent")
    assert log[3:] == ["urgent", "a"]


def test_a_batch_refused_by_a_dead_relay_goes_whole_to_the_next() -> None:
    clock = Clock()
    t, fakes, log = transport(clock)
    fakes[A].answer = Outage("cannot connect")
    ended: dict[int, object] = {}
    t.route("normal").send_many([("s@x", ["r@y"], b"m")] * 3, lambda: None, ended.__setitem__)
    assert sorted(ended) == [0, 1, 2] and all(isinstance(r, Reply) for r in ended.values())
    assert log == ["a", "a", "a", "b", "b", "b"]


@pytest.mark.parametrize("environ, named", [
    ({"BEANMAIL_SMTP_URL": "smtp://a:25,,smtp://b:25"}, "BEANMAIL_SMTP_URL"),
    ({"BEANMAIL_SMTP_URL": "smtp://a:25,smtp://a:25"}, "BEANMAIL_SMTP_URL"),
    ({"BEANMAIL_SMTP_URL_BULK": "http://bulk"}, "BEANMAIL_SMTP_URL_BULK"),
    ({"BEANMAIL_SMTP_URL_URGENT": "smtp://u:x"}, "BEANMAIL_SMTP_URL_URGENT"),
    ({"BEANMAIL_TRANSPORT": "mx", "BEANMAIL_SMTP_URL_URGENT": "smtp://u:25"}, "BEANMAIL_SMTP_URL_URGENT"),
    ({"BEANMAIL_RELAY_QUEUE_COMMAND": "postqueue -j"}, "BEANMAIL_RELAY_QUEUE_HIGH"),
    ({"BEANMAIL_RELAY_QUEUE_HIGH": "100"}, "BEANMAIL_RELAY_QUEUE_COMMAND"),
    ({"BEANMAIL_RELAY_PACE_MIN": "5", "BEANMAIL_RELAY_PACE_MAX": "1"}, "BEANMAIL_RELAY_PACE_MIN"),
    ({"BEANMAIL_RELAY_RETRY_AFTER": "0"}, "BEANMAIL_RELAY_RETRY_AFTER"),
])
def test_bad_relay_settings_fail_at_start_naming_the_variable(environ: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load(environ)


def test_relay_lists_load_from_the_environment() -> None:
    s = load({"BEANMAIL_SMTP_URL": f"{A}, {B}", "BEANMAIL_SMTP_URL_BULK": "smtp://bulk.example:2525"})
    assert s.smtp.host == "a.example"
    assert [t.port for t in RelayPlan.from_settings(s).routes["bulk"]] == [2525, 25, 25]


# -- AIMD -----------------------------------------------------------------------------------------
def test_congestion_halves_what_was_really_sent_and_success_adds_back_slowly() -> None:
    pace = Pace(ceiling=100, floor=0.5, step=1.0, latency_target=1.0)
    now = 0.0
    for _ in range(50):  # 10/s for 5 s, the relay answering in 50 ms
        now += 0.1
        pace.taken(0.05, now, bulk=True)
    assert pace.rate == 100  # at its ceiling: never bound
    pace.congested("451 4.3.0 queue full", now)
    assert pace.rate == pytest.approx(5.0)  # half of the 10/s really sent, not half of the ceiling
    pace.congested("451 4.3.0 queue full", now + 0.2)  # the same round: the news of messages already out
    assert pace.rate == pytest.approx(5.0) and pace.cuts == 1
    for _ in range(10):
        now += 0.2
        pace.taken(0.05, now, bulk=True)
    assert pace.rate == pytest.approx(5 + 10 * 1.0 / 5.3, rel=0.05)  # additive: about +1/s per second
    pace.congested("421 too busy", now + 1.5)
    assert pace.rate < 4 and pace.cuts == 2
    for i in range(20):  # keeps halving, never under the floor
        pace.congested("451", now + 2 + 2 * i)
    assert pace.rate == 0.5


def test_rising_latency_slows_bulk_down() -> None:
    pace = Pace(ceiling=50, floor=0.5, step=1.0, latency_target=1.0)
    now = 0.0
    for _ in range(20):
        now += 0.05
        pace.taken(0.04, now, bulk=True)
    assert pace.rate == 50
    for _ in range(20):  # the relay starts taking seconds per reply (its disk, its queue manager)
        now += 0.5
        pace.taken(3.0, now, bulk=True)
    assert pace.rate < 10 and "replies take" in pace.last_cut_reason


def test_bulk_slots_are_spaced_by_the_pace_and_a_key_keeps_its_slot() -> None:
    pace = Pace(ceiling=2, floor=0.5, step=1.0)
    waits = [pace.book(f"k{i}", 10.0) for i in range(4)]
    assert waits == [0.0, 0.5, 1.0, 1.5]
    assert pace.book("k3", 11.0) == pytest.approx(0.5)  # back after its release: the same slot


# -- the queue's high-water mark and the admission of bulk -----------------------------------------
def mail(key: str, priority: str) -> Envelope:
    return Envelope(kind="mail", id=key, template="t", to=(Recipient("r@y.example"),), priority=priority)


def test_bulk_is_held_at_the_mark_and_urgent_and_normal_go_on() -> None:
    clock = Clock()
    readings = [4]
    s = Settings(smtp_url=A, relay_queue_command="true", relay_queue_high=5, relay_queue_interval=5, relay_hold_delay=7)
    pauses = Pauses()
    book = RelayBook(s, clock=clock, read_queue=lambda t: readings[-1], pause=pauses)
    book.admit(mail("b1", "bulk"))  # 4 queued: it goes, and counts until a reading includes it
    with pytest.raises(Deferred) as held:
        book.admit(mail("b2", "bulk"))
    assert "queue 4 and 1 just sent at or above BEANMAIL_RELAY_QUEUE_HIGH 5" in held.value.reason
    d = disposition(held.value, 8, Backoff(max_attempts=3))
    assert (d.action, d.delay, d.free) == ("release", 7, True)  # no retry spent, however often
    assert pauses.count == 1  # mail.bulk paused meanwhile: the held jobs wait in beanstalkd
    book.admit(mail("u1", "urgent"))
    book.admit(mail("n1", "normal"))
    readings.append(2)  # the relay drained
    clock.now += 10
    book.admit(mail("b2", "bulk"))
    assert book.relays[A].held == ""


def test_an_unreadable_queue_holds_bulk_with_the_reason() -> None:
    def broken(_t: object) -> int:
        raise QueueUnreadable("queue command exited 1: postqueue: fatal: cannot read")

    s = Settings(smtp_url=A, relay_queue_command="false", relay_queue_high=5)
    with pytest.raises(Deferred, match="queue length unknown .*cannot read"):
        RelayBook(s, clock=Clock(), read_queue=broken, pause=Pauses()).admit(mail("b1", "bulk"))


def test_bulk_past_its_slot_goes_back_to_beanstalkd_until_then() -> None:
    clock = Clock()
    s = Settings(smtp_url=A, relay_pace_max=0.5, relay_pace_min=0.1)
    book = RelayBook(s, clock=clock, pause=Pauses())
    book.admit(mail("b1", "bulk"))
    with pytest.raises(Deferred, match="bulk paced at 0.5/s") as paced:
        book.admit(mail("b2", "bulk"))
    assert paced.value.delay == 2 and disposition(paced.value, 1, Backoff()).free


@pytest.mark.parametrize("output, length", [("", 0), ("17\n", 17), ('{"queue_name": "deferred"}\n' * 3, 3)])
def test_queue_output_is_a_number_or_postqueue_json_lines(output: str, length: int) -> None:
    assert parse_queue_output(output) == length


def test_queue_output_that_is_neither_is_refused() -> None:
    with pytest.raises(QueueUnreadable, match="not a number"):
        parse_queue_output("Mail queue is empty\n")


def test_the_board_sums_processes_and_keeps_the_latest_queue(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s.sqlite3"))
    view = {"relay": A, "priorities": "normal,bulk", "up": True, "skipped_until": 0.0, "reason": "", "pace": 4.0,
            "sent_rate": 3.0, "queue": 10, "queue_error": "", "held": ""}
    board.write(store, [view], process="p1", now=100.0)
    board.write(store, [{**view, "up": False, "skipped_until": 130.0, "reason": "refused", "queue": 12}],
                process="p2", now=101.0)
    board.write(store, [view], process="old", now=10.0)  # silent too long: not counted
    [r] = board.read(store, fresh_within=60, now=102.0)
    assert (r["up"], r["reason"], r["pace"], r["queue"], r["processes"]) == (False, "refused", 8.0, 12, 2)


def test_relay_lists_may_be_toml_lists(tmp_path: Path) -> None:
    toml = tmp_path / "beanmail.toml"
    toml.write_text(f'[beanmail]\nsmtp_url = ["{A}", "{B}"]\nsmtp_url_bulk = ["smtp://bulk.example:2525"]\n')
    plan = RelayPlan.from_settings(load({"BEANMAIL_CONFIG": str(toml)}))
    assert [t.host for t in plan.routes["bulk"]] == ["bulk.example", "a.example", "b.example"]
