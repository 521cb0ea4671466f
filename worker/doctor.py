"""`beanmail doctor`: a machine's set-up checked end to end, each finding with what to fix.

It reads the settings as a worker would and the producer's view of the same files
(`producer.config`), then checks beanstalkd (reachable, with a binlog), the store (opens; who may
write it), the way out (relay or DNS, through `worker.health`), the templates (each renders its
sample), and whether producers and workers agree on the secret (the jobs waiting or buried verify
with the workers' keys). Exit status 1 when anything must be fixed.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any, Callable

import greenstalk

from producer import config as producer_config
from producer import envelope as env
from producer.client import connect

from . import health
from .settings import Settings

TUBES_TO_SAMPLE = (*env.MAIL_TUBES, env.MAILOUT_TUBE)


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def register(sub: Any) -> None:
    d = sub.add_parser("doctor", help="check this machine's set-up end to end and say what to fix")
    d.add_argument("--json", action="store_true")
    d.set_defaults(handler=cmd_doctor)


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    findings = examine(settings)
    if args.json:
        print(json.dumps([asdict(f) for f in findings], ensure_ascii=False))
    else:
        for f in findings:
            print(f"{'ok ' if f.ok else 'FIX'}  {f.check}: {f.detail}" + (f"\n       -> {f.fix}" if f.fix else ""))
        bad = sum(not f.ok for f in findings)
        print(f"\n{bad} thing(s) to fix" if bad else "\nall good")
    return int(any(not f.ok for f in findings))


def examine(settings: Settings) -> list[Finding]:
    checks: list[Callable[[Settings], list[Finding]]] = [
        _beanstalkd, _store, _outbound, _templates, _producer, _signatures]
    out: list[Finding] = []
    for check in checks:
        try:
            out += check(settings)
        except Exception as exc:  # noqa: BLE001 - a check that breaks is a finding, not a traceback
            out.append(Finding(check.__name__.strip("_"), False, f"the check failed: {type(exc).__name__}: {exc}"))
    return out


def _beanstalkd(settings: Settings) -> list[Finding]:
    out = []
    for url in settings.beanstalk_urls:
        try:
            with connect(url, timeout=3, encoding=None) as client:
                stats = client.stats()
        except OSError as exc:
            out.append(Finding("beanstalkd", False, f"{url} does not answer: {exc}",
                               "start beanstalkd (with -b DIR for a binlog), or fix BEANMAIL_BEANSTALK_URL"))
            continue
        if int(stats.get("binlog-current-index", 0)) == 0:
            out.append(Finding("beanstalkd", False, f"{url} runs without a binlog: a restart loses every queued job",
                               "start it with -b DIR (the dev stack and the docs do)"))
        else:
            out.append(Finding("beanstalkd", True, f"{url} answers, version {stats.get('version')}, binlog on"))
    return out


def _store(settings: Settings) -> list[Finding]:
    from .ops import open_store

    try:
        open_store(settings).close()
    except Exception as exc:  # noqa: BLE001
        return [Finding("store", False, f"{settings.store}: {getattr(exc, 'reason', exc)}",
                        "fix BEANMAIL_STORE, or the disk / permissions it names")]
    if "://" in settings.store:
        return [Finding("store", True, f"{_redacted(settings.store)} opens")]
    info = os.stat(settings.store)
    folder = os.path.dirname(settings.store)
    shared = bool(info.st_mode & stat.S_IWGRP) and bool(os.stat(folder).st_mode & stat.S_IWGRP)
    detail = (f"{settings.store} opens (owner uid {info.st_uid}, group gid {info.st_gid},"
              f" mode {stat.filemode(info.st_mode)})")
    if shared:
        return [Finding("store", True, detail + "; group-writable with its folder")]
    return [Finding("store", True, detail + "; only its owner may write it: a web app running as another user"
                    " cannot store large messages or preferences there",
                    f"if it must: chgrp APPGROUP {folder} {settings.store}* && chmod g+w {folder} {settings.store}*")]


def _outbound(settings: Settings) -> list[Finding]:
    if settings.transport == "smtp":
        problem = health.relay_problem(settings, 5.0)
        where = f"relay {settings.smtp.host}:{settings.smtp.port}"
        fix = "start the relay, or fix BEANMAIL_SMTP_URL (host, port, starttls, user:password)"
    else:
        problem = health.dns_problem(settings, min(5.0, settings.dns_timeout))
        where = f"DNS {settings.dns or 'the system resolver'}"
        fix = "fix BEANMAIL_DNS, or /etc/resolv.conf"
    return [Finding("way out", not problem, problem or f"{where} answers", fix if problem else "")]


def _templates(settings: Settings) -> list[Finding]:
    from .commands import preview_context
    from .outcomes import Outcome
    from .render import Renderer

    renderer = Renderer(settings.templates)
    out = []
    for name in sorted(os.listdir(settings.templates)):
        folder = os.path.join(settings.templates, name)
        if not os.path.isdir(folder) or name.startswith(("_", ".")):
            continue
        if not os.path.isfile(os.path.join(folder, "subject.txt")):
            continue  # a folder of digest parts only, or not a template
        if not os.path.isfile(os.path.join(folder, "preview.json")):
            out.append(Finding("template", True, f"{name}: no preview.json sample, not rendered here"))
            continue
        context = preview_context(settings.templates, name)
        context.setdefault("recipient", {"address": "preview@example.com", "name": "Preview"})
        try:
            renderer.render(name, context)
            out.append(Finding("template", True, f"{name} renders its sample"))
        except Outcome as exc:
            out.append(Finding("template", False, f"{name}: {exc.reason}", f"fix {folder}"))
    return out or [Finding("template", False, f"no template in {settings.templates}", "fix BEANMAIL_TEMPLATES")]


def _producer(settings: Settings) -> list[Finding]:
    """The producer's view of the same files and environment, beside the workers'."""
    try:
        mine = producer_config.load()
    except producer_config.ConfigError as exc:
        return [Finding("producer", False, str(exc), "fix that setting where it is read")]
    out = []
    if set(settings.beanstalk_urls) != set(mine.url.split(",")):
        out.append(Finding("producer", False, f"producers here queue to {mine.url} ({mine.sources['url']}),"
                           f" workers reserve from {settings.beanstalk_url}",
                           "give both the same BEANMAIL_BEANSTALK_URL"))
    if mine.store and mine.store != settings.store:
        out.append(Finding("producer", False, f"producers here store large messages in {_redacted(mine.store)}"
                           f" ({mine.sources['store']}), workers read {_redacted(settings.store)}",
                           "give both the same BEANMAIL_STORE"))
    return out or [Finding("producer", True, f"queues to {mine.url}, signs with"
                           f" {'a secret' if mine.secret else 'no secret'} ({mine.sources['secret']})")]


def _signatures(settings: Settings) -> list[Finding]:
    """The next job of each tube and state that the workers cannot verify: producers signing
    with another key, or not signing."""
    bad: dict[str, int] = {}
    seen = 0
    for url in settings.beanstalk_urls:
        try:
            client = connect(url, timeout=3, encoding=None)
        except OSError:
            continue
        with client:
            for tube in TUBES_TO_SAMPLE:
                client.use(tube)
                for peek in (client.peek_ready, client.peek_buried, client.peek_delayed):
                    try:
                        job = peek()
                    except greenstalk.NotFoundError:
                        continue
                    seen += 1
                    try:
                        env.decode(job.body, settings.secret or None)
                    except env.EnvelopeError as exc:
                        if "sign" in str(exc):
                            bad[str(exc)] = bad.get(str(exc), 0) + 1
    if bad:
        reasons = "; ".join(f"{n} × {why}" for why, n in bad.items())
        return [Finding("secret", False, f"jobs the workers cannot verify: {reasons}",
                        "give producers and workers the same BEANMAIL_SECRET (a list rotates: the first signs)")]
    if not settings.secret:
        return [Finding("secret", False, "workers accept unsigned jobs (BEANMAIL_SECRET is not set)",
                        "set BEANMAIL_SECRET in beanmail.toml: producers and workers both read it")]
    return [Finding("secret", True, f"set; the {seen} job(s) looked at verify" if seen else "set")]


def _redacted(location: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(location)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return location
