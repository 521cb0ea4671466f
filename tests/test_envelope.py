"""The wire contract: codec output validates against the published JSON Schema, decode gives a
reason for every malformed body, a v2 signature covers exact bytes whoever wrote them, v1 is still
verified, and a secret may name several keys (rotation) for jobs and unsubscribe links alike."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from producer import Notifier
from producer import envelope as env
from producer.client import connect
from producer.envelope import Envelope, EnvelopeError, Recipient
from producer.unsubscribe import TokenError, UnsubscribeApp, make_token, verify_token
from worker.settings import Settings

from .conftest import poison_reasons, run_burst
from .servers import SmtpServer
from .test_mailout import run_fanout

SCHEMA = json.loads((Path(env.__file__).parent / "envelope.schema.json").read_text())


def sample(**kw: object) -> Envelope:
    base: dict = dict(kind="mail", id="welcome:42", to=(Recipient("zoe@example.com", "Zoë"),),
                      template="welcome", context={"name": "Zoë"}, priority="urgent",
                      not_after=2_000_000_000, created_at=1_700_000_000.5,
                      entities={"user": {"type": "user", "id": 42}}, headers={"Reply-To": "a@b.example"})
    base.update(kw)
    return Envelope(**base)


def signed_by_hand(text: bytes, key: str) -> bytes:
    """The v2 signing recipe of docs/envelope.md, written out as another language would."""
    sig = hmac.new(key.encode(), text, hashlib.sha256).hexdigest()
    return b'{"v":2,"signed":' + text + b',"sig":"' + sig.encode() + b'"}'


def v1_signed(obj: dict[str, Any], key: str) -> bytes:
    """A deprecated v1 job as producers made it until now: sig over the canonical form."""
    obj = dict(obj, v=1)
    obj["sig"] = hmac.new(key.encode(), env.canonical(obj), hashlib.sha256).hexdigest()
    return json.dumps(obj, ensure_ascii=False).encode()


# -- the codec and the schema ---------------------------------------------------------------------

@pytest.mark.parametrize("envelope", [
    sample(),
    sample(kind="mailout", id="news#0", to=(Recipient("a@x.example"), Recipient("b@x.example", "B", {"n": 1})),
           exclude=("c@x.example",), priority="bulk"),
    sample(kind="raw", template="", to=(Recipient("a@x.example"),), message="RnJvbTogYQ0KDQpoaQ==",
           context={}, entities={}),
    Envelope(kind="ref", id="big:1", to=(), ref="blob:7f3a", priority="bulk", created_at=1_700_000_000.5),
])
@pytest.mark.parametrize("secret", [None, "s3cret", "new,old", ["new", "old"]])
def test_codec_output_matches_schema_and_round_trips(envelope: Envelope, secret: Any) -> None:
    body = env.encode(envelope, secret)
    jsonschema.validate(json.loads(body), SCHEMA)
    assert env.decode(body, secret) == envelope
    assert env.decode(body, secret).v == 2


def test_body_is_utf8_json_readable_by_other_languages() -> None:
    body = env.encode(sample())
    assert "Zoë".encode() in body  # not \u escapes: PHP and Ruby read it as is
    obj = json.loads(body)
    assert obj["to"] == {"address": "zoe@example.com", "name": "Zoë"}
    assert obj["v"] == 2 and obj["kind"] == "mail"


def test_a_signed_job_is_the_plain_one_wrapped_90_bytes_longer() -> None:
    plain, signed = env.encode(sample()), env.encode(sample(), "s3cret")
    assert signed == signed_by_hand(plain, "s3cret")
    assert len(signed) == len(plain) + 90  # a signed mailout chunk stays under the chunk size too
    assert json.loads(signed)["signed"] == json.loads(plain)  # readable in `beanmail peek`


def test_a_bare_address_string_is_accepted_as_recipient_but_not_one_with_a_display_name() -> None:
    body = json.dumps({"v": 2, "kind": "mail", "id": "k", "template": "welcome", "to": "a@b.example"})
    jsonschema.validate(json.loads(body), SCHEMA)
    assert env.decode(body).recipient == Recipient("a@b.example")
    named = json.loads(body) | {"to": "Zoë <a@b.example>"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(named, SCHEMA)


V2 = b'"kind": "mail", "id": "x", "template": "t", "to": "a@b.example"'


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"not json at all", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"v": 3, ' + V2 + b'}', "'v' must be 1 \\(deprecated\\) or 2"),
    (b'{"kind": "mail"}', "'v' must be"),
    (b'{"hello": "world"}', "unknown field"),
    (b'{"v": 2, "kind": "fax", "id": "x", "template": "t", "to": "a@b.example"}', "'kind'"),
    (b'{"v": 2, "kind": "mail", "template": "t", "to": "a@b.example"}', "'id'"),
    (b'{"v": 2, "kind": "mail", "id": "x", "to": "a@b.example"}', "'template'"),
    (b'{"v": 2, "kind": "mail", "id": "x", "template": "t", "to": 7}', "'to'"),
    (b'{"v": 2, "kind": "mail", "id": "x", "template": "../etc", "to": "a@b.example"}', "plain name"),
    (b'{"v": 2, ' + V2 + b', "prio": 1}', "unknown field"),
    (b'{"v": 2, ' + V2 + b', "sig": "' + b"0" * 64 + b'"}', "exactly"),  # v1's sig on a v2 body
    (b'{"v": 2, ' + V2 + b', "priority": "asap"}', "'priority'"),
    (b'{"v": 2, ' + V2 + b', "entities": {"u": 1}}', "entities.u"),
    (b'{"v": 2, ' + V2 + b', "not_after": "soon"}', "not_after"),
    (b'{"v": 2, "kind": "ref", "id": "x"}', "'ref'"),
    (b'{"v": 2, "kind": "ref", "id": "x", "ref": "b", "template": "t"}', "in a ref job"),
    (b'{"v": 2, "kind": "mail", "id": "x", "template": "t", "to": "a@b.example", "ref": "b"}', "unknown field"),
    # the signed form: the layout is exact, the signed text an unsigned v2 object
    (b'{"v": 2, "signed": {"v": 2, ' + V2 + b'}, "sig": "' + b"0" * 64 + b'"}', "exactly"),
    (b'{"v":2,"signed":{"v":2,' + V2 + b'},"sig":"' + b"0" * 64 + b'"}\n', "exactly"),
    (b'{"v":2,"signed":{"v":2,' + V2 + b'},"sig":"' + b"A" * 64 + b'"}', "exactly"),
    (b'{"v":2,"signed":{"v":2,' + V2 + b'},"sig":"' + b"0" * 63 + b'"}', "exactly"),
    (b'{"v":2,"signed":"{\\"v\\":2}","sig":"' + b"0" * 64 + b'"}', "signed text must be a JSON object"),
    (b'{"v":2,"signed":{"v":1,' + V2 + b'},"sig":"' + b"0" * 64 + b'"}', "signed text must be a v2"),
    (b'{"v":2,"signed":{"v":2,' + V2 + b',"sig":"x"},"sig":"' + b"0" * 64 + b'"}', "unknown field"),
    (b'{"v":2,"signed":{"v":2,' + V2 + b'},"sig":"' + b"0" * 64 + b'","x":1}', "exactly"),
])
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        env.decode(body)


# -- v2 signatures: exact bytes -------------------------------------------------------------------

def test_signature_is_required_and_checked_when_a_secret_is_configured() -> None:
    signed = env.encode(sample(), "s3cret")
    with pytest.raises(EnvelopeError, match="unsigned"):
        env.decode(env.encode(sample()), "s3cret")
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(signed, "other")
    tampered = signed.replace(b"zoe@example.com", b"eve@example.com")
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(tampered, "s3cret")
    assert env.decode(tampered).recipient.address == "eve@example.com"  # only the secret tells
    forged_sig = signed[:-3] + (b"0" if signed[-3:-2] != b"0" else b"1") + signed[-2:]
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(forged_sig, "s3cret")
    with pytest.raises(EnvelopeError, match="64 lowercase hex"):  # a format error, said as one
        env.decode(signed[:-66] + signed[-66:-2].upper() + signed[-2:], "s3cret")


def test_the_signature_covers_the_producers_own_bytes_whatever_its_json_encoder_wrote() -> None:
    """What PHP's json_encode and Ruby's JSON.generate write, and v1 could not verify: escaped
    U+2028 and '/', numeric-looking keys in insertion order, 1.0e+25, -0.0, white space."""
    text = ('{"v":2, "kind":"mail", "id":"php:1", "template":"t", "to":{"address":"zoe@example.com"},\n'
            ' "context":{"line":"a\\u2028b\\/c\\u00eb", "data":{"9":"nine","10":"ten"},'
            ' "big":1.0e+25, "negzero":-0.0, "tenth":0.1}}').encode()
    decoded = env.decode(signed_by_hand(text, "k"), "k")
    context = decoded.context
    assert context["line"] == "a\u2028b/c\u00eb" and list(context["data"]) == ["9", "10"]
    assert context["big"] == 1e25 and str(context["negzero"]) == "-0.0" and context["tenth"] == 0.1
    with pytest.raises(EnvelopeError, match="bad signature"):  # one byte re-encoded is another text
        env.decode(signed_by_hand(text, "k").replace(b"\\u2028", "\u2028".encode()), "k")


# -- v1: deprecated, still verified ---------------------------------------------------------------

def test_v1_jobs_are_still_accepted_and_verified_with_their_canonical_form() -> None:
    obj = json.loads(env.encode(sample()))
    body = v1_signed(obj, "k")
    jsonschema.validate(json.loads(body), SCHEMA)  # the schema still describes v1
    assert env.decode(body, "k") == sample() and env.decode(body, "k").v == 1
    reordered = json.dumps(dict(reversed(list(json.loads(body).items()))), indent=2)
    assert env.decode(reordered, "k") == sample()  # canonical: key order and spacing do not matter
    assert env.decode(v1_signed(obj, "old"), "new,old") == sample()
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(body.replace(b"zoe@", b"eve@"), "k")
    with pytest.raises(EnvelopeError, match="unsigned"):
        env.decode(json.dumps(obj | {"v": 1}), "k")
    assert env.decode(json.dumps(obj | {"v": 1})) == sample()  # no secret: unsigned v1 as before


# -- rotation --------------------------------------------------------------------------------------

def test_the_first_key_signs_and_every_key_verifies() -> None:
    body = env.encode(sample(), "new, old")
    assert env.decode(body, "new") == sample()
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(body, "old")
    old = env.encode(sample(), "old")
    for ring in ("new,old", ["new", "old"], ("old",)):
        assert env.decode(old, ring) == sample()
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(env.encode(sample(), "neither"), "new,old")
    with pytest.raises(ValueError, match="no key"):  # a typo never turns verification off
        env.decode(env.encode(sample()), " , ")


@pytest.mark.parametrize("secret", [None, "s3cret", "new,old"])
def test_the_fan_out_encoder_makes_the_same_jobs_as_the_codec(secret: str | None) -> None:
    chunk = sample(kind="mailout", id="news#3", to=(), priority="bulk", exclude=("boss@example.com",),
                   context={"name": "Zoë", "path": "/a/b", "n": [1, 2.5, None], "ls": "\u2028"},
                   not_after=2_000_000_000)
    body = env.encoder_for(chunk, secret)
    recipient = Recipient("zoe@example.com", "Zoë \"Z\"", {"n": 1})
    made = body("news:zoe@example.com", recipient)
    jsonschema.validate(json.loads(made), SCHEMA)
    expected = Envelope(kind="mail", id="news:zoe@example.com", to=(recipient,), template=chunk.template,
                        context=chunk.context, entities=chunk.entities, priority="bulk", not_after=chunk.not_after,
                        created_at=chunk.created_at, headers=chunk.headers)
    assert made == env.encode(expected, secret)
    assert env.decode(made, secret) == expected
    if secret:
        assert env.decode(made, "s3cret" if secret == "s3cret" else "new") == expected


def test_unsubscribe_links_survive_a_rotation() -> None:
    old = make_token("Zoe@Example.com", "old", list_id="<news.example>")
    assert verify_token(old, "new,old") == ("zoe@example.com", "<news.example>")
    assert verify_token(old, ["new", "old"]) == ("zoe@example.com", "<news.example>")
    new = make_token("zoe@example.com", "new,old")
    assert verify_token(new, "new")[0] == "zoe@example.com"
    for token, ring in ((new, "old"), (make_token("zoe@example.com", "neither"), "new,old")):
        with pytest.raises(TokenError, match="bad signature"):
            verify_token(token, ring)

    recorded: list[tuple[str, str]] = []
    app = UnsubscribeApp("new,old", lambda a, l: recorded.append((a, l)))

    def post(token: str) -> str:
        data = f"token={urllib.parse.quote(token)}".encode()
        status: list[str] = []
        app({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data)},
            lambda s, h: status.append(s))
        return status[0]
    assert post(old) == "200 OK" and recorded == [("zoe@example.com", "<news.example>")]
    assert post(make_token("eve@example.com", "neither")).startswith("400")
    assert recorded == [("zoe@example.com", "<news.example>")]
    with pytest.raises(ValueError):
        UnsubscribeApp(",", recorded.append)


def put(settings: Settings, body: bytes, tube: str = "mail.normal") -> int:
    with connect(settings.beanstalk_url, encoding=None) as c:
        c.use(tube)
        return c.put(body)


def test_jobs_signed_with_the_old_key_are_delivered_after_rotation(settings: Settings, smtp: SmtpServer) -> None:
    """Measured before: rotating the secret buried every queued signed job as 'bad signature'."""
    old = Notifier(settings.beanstalk_url, secret="old")
    for i in range(3):
        old.notify("welcome", f"v2-{i}@example.com", {"name": f"n{i}"})
    old.mailout("welcome", ["m1@example.com", "m2@example.com"], {"name": "m"}, key="news:1")
    v1 = json.loads(env.encode(sample(to=(Recipient("v1@example.com"),), headers={}, entities={},
                                      priority="normal")))
    put(settings, v1_signed(v1, "old"))  # queued by a producer still on v1
    forged = Notifier(settings.beanstalk_url, secret="neither").notify("welcome", "x@example.com", {"name": "x"})
    old.close()

    rotated = settings.replace(secret="new,old")
    run_fanout(rotated)
    run_burst(rotated)
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == [
        "m1@example.com", "m2@example.com", "v1@example.com",
        "v2-0@example.com", "v2-1@example.com", "v2-2@example.com"]
    assert "bad signature" in poison_reasons(settings)[forged]


def test_what_the_docs_say_of_headers_and_recipients_holds(settings: Settings, smtp: SmtpServer) -> None:
    def job(**kw: Any) -> bytes:
        return env.encode(Envelope(**{"kind": "mail", "id": f"docs:{len(kw)}:{sorted(kw)}", "template": "welcome",
                                      "to": (Recipient("zoe@example.com"),), "context": {"name": "Zoë"}, **kw}))
    cc = put(settings, job(headers={"Cc": "boss@example.com"}))
    named = put(settings, job(to=(Recipient("Zoë <zoe@example.com>"),)))
    bulk = put(settings, job(priority="bulk", headers={"precedence": "list", "X-Campaign": "47"}), "mail.bulk")
    run_burst(settings)
    reasons = poison_reasons(settings)
    assert "header 'Cc' may not be set by a job" in reasons[cc]
    assert "invalid recipient address" in reasons[named]
    assert bulk not in reasons
    [received] = smtp.wait_for(1)
    msg = received.message
    assert msg.get_all("Precedence") == ["list"]  # the job's own header replaces the worker's
    assert msg["List-Id"] == "<welcome.beanmail.example>" and msg["X-Campaign"] == "47"
    assert msg["Auto-Submitted"] == "auto-generated"
