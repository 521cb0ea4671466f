"""Other languages get signing right from the docs alone: the PHP (Pheanstalk) and Ruby (beaneater)
examples put signed v2 jobs holding what v1's canonical form made them get wrong (U+2028, keys
that look like numbers, floats written as 1.0e+25 and -0.0); a worker with the secret delivers
them with the data intact, and buries a tampered copy as poison."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import greenstalk
import jsonschema
import pytest

from producer import envelope as env
from producer.client import connect
from worker.settings import Settings

from .conftest import ROOT, poison_reasons, run_burst
from .servers import Beanstalkd, SmtpServer

SECRET = "from-the-docs-alone"
COMMANDS = {"php": ["php", str(ROOT / "examples/php/enqueue.php")],
            "ruby": ["ruby", str(ROOT / "examples/ruby/enqueue.rb")]}
# U+2028 as each language writes it: PHP escapes it even with JSON_UNESCAPED_UNICODE
LINE_SEPARATOR = {"php": b"\\u2028", "ruby": "\u2028".encode()}
CONTEXT = {"line": "before\u2028after\u2029end", "data": {"9": "nine", "10": "ten"},
           "big": 1.0e25, "negzero": -0.0, "tenth": 0.1, "path": "a/b"}
DOCS = (ROOT / "docs/envelope.md").read_text()
SCHEMA = json.loads((ROOT / "producer/envelope.schema.json").read_text())


@pytest.fixture
def templates(tmp_path: Path) -> str:
    folder = tmp_path / "templates" / "data"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Data for {{ recipient.name }}", encoding="utf-8")
    (folder / "body.txt").write_text(
        "line={{ line }}|\nkeys={{ data | join(',') }} nine={{ data['9'] }} ten={{ data['10'] }}\n"
        "big={{ big }} negzero={{ negzero }} tenth={{ tenth }} path={{ path }}\n", encoding="utf-8")
    return str(tmp_path / "templates")


def enqueue(language: str, beanstalkd: Beanstalkd, secret: str) -> int:
    out = subprocess.run([*COMMANDS[language], "127.0.0.1", str(beanstalkd.port), "data", "zoe@example.com",
                          "Zoë Ünicode", json.dumps(CONTEXT, ensure_ascii=False), secret],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.parametrize("language", ["php", "ruby"])
def test_a_signed_job_from_another_language_is_delivered_and_a_tampered_copy_buried(
        language: str, settings: Settings, beanstalkd: Beanstalkd, smtp: SmtpServer, templates: str) -> None:
    settings = settings.replace(secret=f"{SECRET},an-older-key", templates=templates)
    job = enqueue(language, beanstalkd, SECRET)
    with connect(settings.beanstalk_url, encoding=None) as c:
        body = c.peek(job).body
        assert body.startswith(b'{"v":2,"signed":{') and re.search(rb',"sig":"[0-9a-f]{64}"}$', body)
        text = body[len(b'{"v":2,"signed":'):-len(b',"sig":"') - 66]
        assert LINE_SEPARATOR[language] in text and b'{"9":"nine","10":"ten"}' in text
        assert b"1.0e+25" in text and b"-0.0" in text  # as the language writes floats ...
        assert env.canonical(json.loads(text)) != text  # ... which no canonical form reproduces
        jsonschema.validate(json.loads(body), SCHEMA)
        c.use("mail.urgent")
        tampered = c.put(body.replace(b"nine", b"NINE"))

    run_burst(settings)
    [received] = smtp.wait_for(1)
    msg = received.message
    assert msg["Subject"] == "Data for Zoë Ünicode"
    assert msg["To"].addresses[0].display_name == "Zoë Ünicode"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == (
        "line=before\u2028after\u2029end|\nkeys=9,10 nine=nine ten=ten\n"
        "big=1e+25 negzero=-0.0 tenth=0.1 path=a/b\n")
    with connect(settings.beanstalk_url, encoding=None) as c:
        assert c.stats_job(tampered)["state"] == "buried"
        with pytest.raises(greenstalk.NotFoundError):
            c.stats_job(job)  # delivered and deleted
    assert "bad signature" in poison_reasons(settings)[tampered]


# -- the docs show the code the tests run ---------------------------------------------------------

def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS, re.S)


@pytest.mark.parametrize("language, example", [("php", "examples/php/enqueue.php"),
                                               ("ruby", "examples/ruby/enqueue.rb")])
def test_the_signing_recipe_in_the_docs_is_the_tested_example(language: str, example: str) -> None:
    source = (ROOT / example).read_text()
    recipe = [b for b in blocks(language) if "sig" in b]
    assert recipe, f"docs/envelope.md shows no {language} signing recipe"
    for block in recipe:
        assert block in source, f"docs/envelope.md's {language} recipe is not in {example}:\n{block}"


def test_the_json_examples_in_the_docs_are_valid_jobs() -> None:
    examples = blocks("json")
    assert len(examples) >= 4
    for text in examples:
        body = text.strip().encode()
        jsonschema.validate(json.loads(body), SCHEMA)
        env.decode(body)
    signed = [t.strip().encode() for t in examples if '"signed"' in t]
    assert signed and all(env.decode(body, "example-secret") for body in signed)  # the docs' secret


def test_the_node_recipe_in_the_docs_signs_what_the_worker_verifies() -> None:
    [recipe] = blocks("js")
    job = {"v": 2, "kind": "mail", "id": "node:1", "template": "data", "to": {"address": "zoe@example.com"},
           "context": CONTEXT}
    script = recipe + "\nprocess.stdout.write(beanmailBody(JSON.parse(process.argv[1]), process.argv[2]));\n"
    out = subprocess.run(["node", "-e", script, json.dumps(job), f"{SECRET},an-older-key"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    decoded = env.decode(out.stdout, SECRET)
    assert decoded.context == CONTEXT | {"negzero": 0}  # JavaScript writes -0 as 0
    with pytest.raises(env.EnvelopeError, match="bad signature"):
        env.decode(out.stdout.replace(b"nine", b"NINE"), SECRET)
