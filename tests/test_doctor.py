"""`beanmail doctor` checks a machine's set-up end to end and says what to fix."""

from __future__ import annotations

import json
from pathlib import Path

from producer import Notifier
from worker.settings import Settings
from worker.store import Store

from .conftest import ROOT, bare_env, beanmail
from .servers import Beanstalkd, SmtpServer, free_port


def doctor(env: dict[str, str]) -> tuple[int, dict[str, list[dict]]]:
    proc = beanmail("doctor", "--json", env=env, check=False)
    by_check: dict[str, list[dict]] = {}
    for f in json.loads(proc.stdout):
        by_check.setdefault(f["check"], []).append(f)
    return proc.returncode, by_check


def test_a_good_set_up_is_all_good_and_each_fault_is_named_with_its_fix(settings: Settings, beanstalkd: Beanstalkd,
                                                                        smtp: SmtpServer, tmp_path: Path) -> None:
    Store(settings.store).close()
    env = bare_env(settings, BEANMAIL_SECRET="k1", BEANMAIL_TEMPLATES=str(ROOT / "templates"))
    code, found = doctor(env)
    assert code == 0, found
    assert all(f["ok"] for fs in found.values() for f in fs)
    assert {"beanstalkd", "store", "way out", "template", "producer", "secret"} <= set(found)
    assert any(f["detail"] == "password_reset renders its sample" for f in found["template"])

    # a producer signing with an old key, a relay that is gone, a template that no longer renders
    Notifier(settings.beanstalk_url, secret="old").notify("welcome", "a@example.com", {"name": "A"})
    templates = tmp_path / "templates"
    (templates / "hello").mkdir(parents=True)
    (templates / "hello" / "subject.txt").write_text("Hi {{ name }}")
    (templates / "hello" / "body.txt").write_text("{{ name.first }}\n")
    (templates / "hello" / "preview.json").write_text('{"nom": "x"}')
    broken = bare_env(settings, BEANMAIL_SECRET="k1", BEANMAIL_TEMPLATES=str(templates),
                      BEANMAIL_SMTP_URL=f"smtp://127.0.0.1:{free_port()}")
    code, found = doctor(broken)
    assert code == 1
    [secret] = found["secret"]
    assert not secret["ok"] and "bad signature" in secret["detail"] and "same BEANMAIL_SECRET" in secret["fix"]
    [way_out] = found["way out"]
    assert not way_out["ok"] and way_out["detail"].startswith("relay: cannot connect") and "BEANMAIL_SMTP_URL" in way_out["fix"]
    [template] = found["template"]
    assert not template["ok"] and template["detail"] == "hello: render hello: 'name' is undefined"
    text = beanmail("doctor", env=broken, check=False).stdout
    assert "FIX  secret: jobs the workers cannot verify: 1 × bad signature" in text and "3 thing(s) to fix" in text


def test_beanstalkd_without_a_binlog_is_named(settings: Settings, smtp: SmtpServer, tmp_path: Path) -> None:
    plain = Beanstalkd(tmp_path / "plain", binlog=False).start()
    try:
        Store(settings.store).close()
        env = bare_env(settings.replace(beanstalk_url=plain.url), BEANMAIL_TEMPLATES=str(ROOT / "templates"),
                       BEANMAIL_SECRET="k1")
        code, found = doctor(env)
    finally:
        plain.stop(kill=True)
    assert code == 1
    [bs] = found["beanstalkd"]
    assert not bs["ok"] and "without a binlog" in bs["detail"] and "-b DIR" in bs["fix"]
    assert [f for fs in found.values() for f in fs if not f["ok"]] == [bs]
