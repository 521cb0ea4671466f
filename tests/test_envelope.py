"""The wire contract: codec output validates against the published JSON Schema, and decode gives
a reason for every malformed body."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from producer import envelope as env
from producer.envelope import Envelope, EnvelopeError, Recipient

SCHEMA = json.loads((Path(env.__file__).parent / "envelope.schema.json").read_text())


def sample(**kw: object) -> Envelope:
    base: dict = dict(kind="mail", id="welcome:42", to=(Recipient("zoe@example.com", "Zoë"),),
                      template="welcome", context={"name": "Zoë"}, priority="urgent",
                      not_after=2_000_000_000, created_at=1_700_000_000.5,
                      entities={"user": {"type": "user", "id": 42}}, headers={"Reply-To": "a@b.example"})
    base.update(kw)
    return Envelope(**base)


@pytest.mark.parametrize("envelope", [
    sample(),
    sample(kind="mailout", id="news#0", to=(Recipient("a@x.example"), Recipient("b@x.example", "B", {"n": 1})),
           exclude=("c@x.example",), priority="bulk"),
    sample(kind="raw", template="", to=(Recipient("a@x.example"),), message="RnJvbTogYQ0KDQpoaQ==",
           context={}, entities={}),
])
@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_codec_output_matches_schema_and_round_trips(envelope: Envelope, secret: str | None) -> None:
    body = env.encode(envelope, secret)
    jsonschema.validate(json.loads(body), SCHEMA)
    assert env.decode(body, secret) == envelope


def test_body_is_utf8_json_readable_by_other_languages() -> None:
    body = env.encode(sample())
    assert "Zoë".encode() in body  # not \u escapes: PHP and Ruby read it as is
    obj = json.loads(body)
    assert obj["to"] == {"address": "zoe@example.com", "name": "Zoë"}
    assert obj["v"] == 1 and obj["kind"] == "mail"


def test_a_bare_address_string_is_accepted_as_recipient() -> None:
    body = json.dumps({"v": 1, "kind": "mail", "id": "k", "template": "welcome", "to": "a@b.example"})
    jsonschema.validate(json.loads(body), SCHEMA)
    assert env.decode(body).recipient == Recipient("a@b.example")


@pytest.mark.parametrize("body, reason", [
    (b"\xff\xfe garbage", "not UTF-8"),
    (b"not json at all", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"v": 2, "kind": "mail", "id": "x", "template": "t", "to": "a@b.example"}', "'v' must be 1"),
    (b'{"v": 1, "kind": "fax", "id": "x", "template": "t", "to": "a@b.example"}', "'kind'"),
    (b'{"v": 1, "kind": "mail", "template": "t", "to": "a@b.example"}', "'id'"),
    (b'{"v": 1, "kind": "mail", "id": "x", "to": "a@b.example"}', "'template'"),
    (b'{"v": 1, "kind": "mail", "id": "x", "template": "t", "to": 7}', "'to'"),
    (b'{"v": 1, "kind": "mail", "id": "x", "template": "../etc", "to": "a@b.example"}', "plain name"),
    (b'{"v": 1, "kind": "mail", "id": "x", "template": "t", "to": "a@b.example", "prio": 1}', "unknown field"),
    (b'{"v": 1, "kind": "mail", "id": "x", "template": "t", "to": "a@b.example", "priority": "asap"}', "'priority'"),
    (b'{"v": 1, "kind": "mail", "id": "x", "template": "t", "to": "a@b.example", "entities": {"u": 1}}', "entities.u"),
    (b'{"v": 1, "kind": "mail", "id": "x", "template": "t", "to": "a@b.example", "not_after": "soon"}', "not_after"),
])
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        env.decode(body)


def test_signature_is_required_and_checked_when_a_secret_is_configured() -> None:
    signed = env.encode(sample(), "s3cret")
    unsigned = env.encode(sample())
    with pytest.raises(EnvelopeError, match="unsigned"):
        env.decode(unsigned, "s3cret")
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(signed, "other")
    tampered = json.loads(signed)
    tampered["to"]["address"] = "mallory@evil.example"
    with pytest.raises(EnvelopeError, match="bad signature"):
        env.decode(json.dumps(tampered), "s3cret")


def test_signature_covers_canonical_json_so_key_order_and_spacing_do_not_matter() -> None:
    obj = json.loads(env.encode(sample(), "k"))
    reordered = json.dumps(dict(reversed(list(obj.items()))), indent=2)
    assert env.decode(reordered, "k") == sample()


@pytest.mark.parametrize("secret", [None, "s3cret"])
def test_the_fan_out_encoder_makes_the_same_jobs_as_the_codec(secret: str | None) -> None:
    chunk = sample(kind="mailout", id="news#3", to=(), priority="bulk", exclude=("boss@example.com",),
                   context={"name": "Zoë", "path": "/a/b", "n": [1, 2.5, None]}, not_after=2_000_000_000)
    body = env.encoder_for(chunk, secret)
    recipient = Recipient("zoe@example.com", "Zoë \"Z\"", {"n": 1})
    made = body("news:zoe@example.com", recipient)
    jsonschema.validate(json.loads(made), SCHEMA)
    expected = Envelope(kind="mail", id="news:zoe@example.com", to=(recipient,), template=chunk.template,
                        context=chunk.context, entities=chunk.entities, priority="bulk", not_after=chunk.not_after,
                        created_at=chunk.created_at, headers=chunk.headers)
    assert env.decode(made, secret) == expected
