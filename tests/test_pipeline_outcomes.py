"""Every outcome of the sending stage, in the unit tier: the real pipeline (worker/pipeline.py)
with its real store on an SQLite file and the real protocol core, the SMTP server a script
(tests/fakes.py) and the job an in-memory one. What a user would see is asserted: the job's fate
(sent, skipped, bounced, released with which delay, buried with which reason), what the delivery
log and the suppression list say, and what reached the server."""

from __future__ import annotations

from email import message_from_bytes, policy
from pathlib import Path

import pytest

from producer import envelope as env
from worker.outcomes import Action, Fate, Outage
from worker.delivery import Result
from worker.pipeline import Pipeline
from worker.settings import Settings
from worker.store import Store

from .fakes import LOST, ScriptedTransport

pytestmark = pytest.mark.unit

ACCEPT = ScriptedTransport.ACCEPT


def refused_at_rcpt(reply: bytes) -> tuple[bytes, ...]:
    return (b"250 ok", reply, b"554 5.5.1 no valid recipients", b"250 reset")


def refused_at_end(reply: bytes) -> tuple[bytes, ...]:
    return (b"250 ok", b"250 ok", b"354 go", reply, b"250 reset")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(beanstalk_url="beanstalk://127.0.0.1:1", store=str(tmp_path / "store.sqlite3"),
                    from_addr="Shop <noreply@shop.example>", backoff_base=10, backoff_max=20, max_attempts=3,
                    in_doubt_delay=900, greylist_delay=120)


class Stage:
    """A pipeline on a scripted server, sending one job body at a time."""

    def __init__(self, settings: Settings, *scripts: object) -> None:
        self.store = Store(settings.store)
        self.transport = ScriptedTransport(*scripts)  # type: ignore[arg-type]
        self.pipeline = Pipeline(settings, self.store, transport=self.transport)  # type: ignore[arg-type]

    def run(self, body: bytes, attempt: int = 1) -> Result:
        return self.pipeline.run(body, attempt)

    def outcome(self, key: str) -> tuple[str, str]:
        [row] = self.store.deliveries(key=key)
        return row.outcome, row.reason


def mail(key: str = "k1", to: str = "zoe@example.com", template: str = "welcome", priority: str = "normal",
         **context: object) -> bytes:
    return env.encode(env.Envelope(kind="mail", id=key, to=(env.Recipient(to),), template=template,
                                   context={"name": "Zoë", **context}, priority=priority))


def test_a_mail_is_rendered_sent_and_recorded(settings: Settings) -> None:
    stage = Stage(settings)
    result = stage.run(mail())
    assert (result.disposition.action, result.disposition.outcome) == (Action.DELETE, Fate.SENT)
    [content] = stage.transport.messages
    message = message_from_bytes(content[:-3], policy=policy.default)
    assert message["To"] == "zoe@example.com" and "Zoë" in message.get_body(("plain",)).get_content()
    assert stage.transport.servers[0].commands[:2] == ["MAIL FROM:<noreply@shop.example>", "RCPT TO:<zoe@example.com>"]
    assert stage.outcome("k1") == ("sent", "")


def test_a_key_already_sent_is_skipped_and_not_sent_again(settings: Settings) -> None:
    stage = Stage(settings)
    stage.run(mail())
    again = stage.run(mail())
    assert (again.disposition.action, again.disposition.outcome) == (Action.DELETE, Fate.SKIPPED)
    assert "duplicate" in again.disposition.reason and len(stage.transport.messages) == 1


@pytest.mark.parametrize("body, why", [
    (b"\x00 not json", "bad envelope"),
    (mail(template="nope"), "unknown template 'nope'"),
    (mail(to="not an address"), "recipient"),
    (b'{"v":2,"kind":"mail","id":"k1"}', "bad envelope"),
])
def test_a_job_that_cannot_be_sent_is_buried_with_its_reason_and_nothing_goes(settings: Settings, body: bytes,
                                                                                why: str) -> None:
    stage = Stage(settings)
    result = stage.run(body)
    assert (result.disposition.action, result.disposition.outcome) == (Action.BURY, Fate.POISON)
    assert why in result.disposition.reason
    assert stage.transport.servers == []


def test_a_header_injection_through_the_context_is_buried_not_sent(settings: Settings) -> None:
    stage = Stage(settings)
    result = stage.run(mail(name="Zoë\r\nBcc: everyone@example.com"))
    assert result.disposition.outcome is Fate.POISON and "control character" in result.disposition.reason
    assert stage.transport.servers == []


def test_a_mailbox_that_does_not_exist_bounces_hard_and_is_suppressed(settings: Settings) -> None:
    stage = Stage(settings, refused_at_rcpt(b"550 5.1.1 no such user"))
    result = stage.run(mail())
    assert (result.disposition.action, result.disposition.outcome) == (Action.DELETE, Fate.BOUNCED)
    assert stage.store.suppressed("zoe@example.com") is not None
    later = stage.run(mail(key="k2"))  # the next mail to that address is not even tried
    assert later.disposition.outcome is Fate.SKIPPED and len(stage.transport.servers) == 1


def test_a_policy_refusal_bounces_the_message_but_never_suppresses_the_address(settings: Settings) -> None:
    stage = Stage(settings, refused_at_end(b"554 5.7.1 message looks like spam"))
    result = stage.run(mail())
    assert result.disposition.outcome is Fate.BOUNCED
    assert stage.store.suppressed("zoe@example.com") is None
    assert stage.run(mail(key="k2")).disposition.outcome is Fate.SENT


def test_a_temporary_refusal_is_released_with_the_backoff_and_buried_when_attempts_run_out(settings: Settings) -> None:
    stage = Stage(settings, refused_at_rcpt(b"450 4.2.0 mailbox busy"), refused_at_rcpt(b"450 4.2.0 mailbox busy"))
    first = stage.run(mail(), attempt=1)
    assert (first.disposition.action, first.disposition.outcome) == (Action.RELEASE, Fate.DEFERRED)
    assert 5 <= first.disposition.delay <= 10 and not first.disposition.free  # base 10 s, jittered down to half
    assert stage.outcome("k1")[0] == "deferred"
    last = stage.run(mail(), attempt=3)
    assert (last.disposition.action, last.disposition.outcome) == (Action.BURY, Fate.EXHAUSTED)
    assert last.disposition.reason.startswith("3 attempts:")


def test_greylisting_is_retried_after_its_own_delay_not_the_backoff(settings: Settings) -> None:
    stage = Stage(settings, refused_at_rcpt(b"451 4.7.1 Greylisted, please try again later"))
    result = stage.run(mail())
    assert (result.disposition.action, result.disposition.delay) == (Action.RELEASE, 120)


def test_no_reply_to_the_end_of_data_is_in_doubt_and_held_for_the_in_doubt_delay(settings: Settings) -> None:
    stage = Stage(settings, (b"250 ok", b"250 ok", b"354 go", LOST))
    result = stage.run(mail())
    assert (result.disposition.action, result.disposition.outcome) == (Action.RELEASE, Fate.IN_DOUBT)
    assert result.disposition.delay == 900 and "may have been delivered" in result.disposition.reason
    copy = stage.run(mail())  # a second copy of the key, meanwhile: held as well, not sent
    assert copy.disposition.action is Action.RELEASE and len(stage.transport.servers) == 1


def test_a_relay_that_drops_before_the_content_defers_and_costs_an_attempt(settings: Settings) -> None:
    stage = Stage(settings, (b"250 ok", LOST))
    result = stage.run(mail())
    assert (result.disposition.action, result.disposition.outcome) == (Action.RELEASE, Fate.DEFERRED)
    assert "dropped the connection" in result.disposition.reason and not result.disposition.free


def test_a_relay_that_cannot_be_reached_is_an_outage_that_costs_no_attempt(settings: Settings) -> None:
    stage = Stage(settings, Outage("cannot connect to relay.example:25: Connection refused"))
    result = stage.run(mail(), attempt=3)  # even on the last attempt: an outage buries nothing
    assert (result.disposition.action, result.disposition.outcome) == (Action.RELEASE, Fate.DEFERRED)
    assert result.disposition.free


@pytest.mark.parametrize("source, priority, fate", [
    ("unsubscribe", "normal", Fate.SKIPPED),
    ("unsubscribe", "urgent", Fate.SENT),  # a password reset still reaches someone who unsubscribed
    ("soft-bounce", "urgent", Fate.SENT),
    ("operator", "urgent", Fate.SKIPPED),  # an operator's suppression stops everything
])
def test_a_suppressed_address_gets_what_its_suppression_allows(settings: Settings, source: str, priority: str,
                                                              fate: Fate) -> None:
    stage = Stage(settings)
    stage.store.suppress("zoe@example.com", "test", source)
    assert stage.run(mail(priority=priority)).disposition.outcome is fate


def test_a_bug_in_a_step_buries_the_job_with_the_bug_named_and_the_stage_goes_on(settings: Settings) -> None:
    class Broken(ScriptedTransport):
        def send(self, *args: object, **kwargs: object):  # noqa: ANN202
            raise KeyError("surprise")
    stage = Stage(settings)
    stage.pipeline.transport = Broken()
    result = stage.run(mail())
    assert (result.disposition.action, result.disposition.outcome) == (Action.BURY, Fate.POISON)
    assert "KeyError" in result.disposition.reason
    stage.pipeline.transport = stage.transport
    assert stage.run(mail(key="k2")).disposition.outcome is Fate.SENT


def test_a_new_step_is_one_class_registered_a_per_tenant_hourly_quota(settings: Settings) -> None:
    """What a maintainer writes to add a check the pipeline did not have: one class with a name
    and ``check``, registered before the rate step. Tenant A's third mail of the hour waits for
    the next hour, at no attempt; tenant B's goes; the built-in steps run as before."""
    from worker.checks import BatchFacts
    from worker.outcomes import Deferred

    class TenantQuota:
        name = "tenant-quota"

        def __init__(self, per_hour: int, clock: float) -> None:
            self.per_hour, self.clock, self.sent = per_hour, clock, {}

        def check(self, envelope: env.Envelope, batch: BatchFacts) -> env.Envelope:
            tenant, hour = envelope.context.get("tenant", ""), int(self.clock // 3600)
            used = self.sent.get((tenant, hour), 0)
            if used >= self.per_hour:
                raise Deferred(f"tenant {tenant} sent {used} this hour", delay=int(3600 - self.clock % 3600))
            self.sent[(tenant, hour)] = used + 1
            return envelope

    stage = Stage(settings)
    stage.pipeline.checks.register(TenantQuota(per_hour=2, clock=1_800_000_000.0 + 600), before="rate")
    assert stage.pipeline.checks.names == ["suppression", "digest", "tenant-quota", "rate", "brake"]
    fates = [stage.run(mail(key=f"a{i}", tenant="A")).disposition for i in range(3)]
    assert [d.outcome for d in fates] == [Fate.SENT, Fate.SENT, Fate.DEFERRED]
    assert (fates[2].delay, fates[2].free) == (3000, True) and "tenant A sent 2" in fates[2].reason
    assert stage.run(mail(key="b0", tenant="B")).disposition.outcome is Fate.SENT
    stage.store.suppress("zoe@example.com", "test", "operator")  # the built-in steps still run first
    assert stage.run(mail(key="a9", tenant="A")).disposition.outcome is Fate.SKIPPED


def test_a_step_is_registered_once_and_next_to_a_step_that_exists() -> None:
    from worker.checks import Checks, Suppression

    checks = Checks([Suppression()])
    with pytest.raises(ValueError, match="registered already"):
        checks.register(Suppression())

    class Late:
        name = "late"

        def check(self, envelope: env.Envelope, batch: object) -> env.Envelope:
            return envelope
    with pytest.raises(ValueError, match="no step named 'rate'"):
        checks.register(Late(), after="rate")
    checks.register(Late(), after="suppression")
    assert checks.names == ["suppression", "late"]
