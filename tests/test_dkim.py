"""DKIM: keys made by `beanmail dkim keygen`, their TXT records served by a real dnsmasq, mail
signed by the worker and checked by dkimpy's verifier exactly as a receiver would check it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Iterator

import dkim
import dns.resolver
import pytest

from producer import Notifier
from worker.settings import Settings

from .conftest import bare_env, beanmail, run_burst
from .servers import Dnsmasq, SmtpServer

DOMAIN = "beanmail.example"


def keygen(tmp_path: Path, selector: str, algorithm: str = "rsa") -> tuple[Path, list[str]]:
    """A key written by the real command, and the TXT strings it printed."""
    key = tmp_path / f"{selector}.pem"
    out = beanmail("dkim", "keygen", "--selector", selector, "--domain", DOMAIN, "--key", str(key),
                   "--algorithm", algorithm, env=bare_env()).stdout
    line = next(x for x in out.splitlines() if x.startswith(f"{selector}._domainkey.{DOMAIN}. IN TXT"))
    return key, re.findall(r'"([^"]*)"', line)


def txt_lookup(server: Dnsmasq) -> Callable[..., bytes]:
    """dkimpy's dnsfunc, asking the test's dnsmasq instead of the system's resolver."""
    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = ["127.0.0.1"], server.port, timeout
        answer = r.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(next(iter(answer)).strings)
    return get_txt


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[dict[str, Path], Dnsmasq]]:
    made = {"rsa": keygen(tmp_path, "s2026", "rsa"), "ed25519": keygen(tmp_path, "ed2026", "ed25519")}
    lines = [f"txt-record={sel}._domainkey.{DOMAIN}," + ",".join(f'"{s}"' for s in strings)
             for sel, (_, strings) in zip(("s2026", "ed2026"), made.values())]
    server = Dnsmasq(tmp_path / "dns", [f"local=/{DOMAIN}/", *lines]).start()
    yield {name: key for name, (key, _) in made.items()}, server
    server.stop()


def signed(settings: Settings, key: Path, selector: str) -> Settings:
    return settings.replace(dkim_key=str(key), dkim_selector=selector,
                            unsubscribe_url="https://app.beanmail.example/unsubscribe", unsubscribe_secret="u" * 32)


@pytest.mark.parametrize("algorithm,selector", [("rsa", "s2026"), ("ed25519", "ed2026")])
def test_worker_signs_and_dkimpy_verifies_against_dnsmasq(settings: Settings, notifier: Notifier, smtp: SmtpServer,
                                                         keys: tuple[dict[str, Path], Dnsmasq], algorithm: str,
                                                         selector: str) -> None:
    paths, dns_server = keys
    notifier.notify("welcome", "Zoë <zoe@example.com>", {"name": "Zoë"}, priority="urgent", key=f"w-{algorithm}")
    notifier.notify("welcome", "bob@example.com", {"name": "Bob"}, priority="bulk", key=f"news-7:bob@example.com")
    run_burst(signed(settings, paths[algorithm], selector))
    by_key = {m.message["To"].addresses[0].username: m for m in smtp.wait_for(2)}
    lookup = txt_lookup(dns_server)
    for local, message in by_key.items():
        assert dkim.verify(message.data, dnsfunc=lookup), f"{local}: signature does not verify"
        tags = dict(t.strip().split("=", 1) for t in " ".join(message.message["DKIM-Signature"].split()).split(";") if "=" in t)
        assert tags["d"] == DOMAIN and tags["s"] == selector and tags["a"] == f"{algorithm}-sha256"
        signed_headers = set(tags["h"].replace(" ", "").split(":"))
        assert {"from", "to", "subject", "date", "message-id", "mime-version", "content-type",
                "feedback-id"} <= signed_headers
    assert {"list-id", "list-unsubscribe", "list-unsubscribe-post"} <= set(
        " ".join(by_key["bob"].message["DKIM-Signature"].split()).split("h=")[1].split(";")[0].replace(" ", "").split(":"))
    assert by_key["bob"].message["Feedback-ID"] == f"welcome:news-7:bulk:{DOMAIN}"
    assert by_key["zoe"].message["Feedback-ID"] == f"welcome:-:urgent:{DOMAIN}"
    # a receiver sees any change made on the way
    tampered = by_key["zoe"].data.replace(b"Subject: ", b"Subject: Re: ", 1)
    assert not dkim.verify(tampered, dnsfunc=lookup)


def test_raw_jobs_are_signed_only_when_their_from_is_in_the_signing_domain(
        settings: Settings, notifier: Notifier, smtp: SmtpServer, keys: tuple[dict[str, Path], Dnsmasq]) -> None:
    paths, dns_server = keys
    ours = b"From: App <app@" + DOMAIN.encode() + b">\r\nTo: a@example.com\r\nSubject: ours\r\n\r\nbody\r\n"
    theirs = b"From: other@elsewhere.example\r\nTo: b@example.com\r\nSubject: theirs\r\n\r\nbody\r\n"
    notifier.send_raw(ours, ["a@example.com"], key="raw-ours")
    notifier.send_raw(theirs, ["b@example.com"], key="raw-theirs")
    run_burst(signed(settings, paths["rsa"], "s2026"))
    got = {m.rcpt_tos[0]: m for m in smtp.wait_for(2)}
    assert dkim.verify(got["a@example.com"].data, dnsfunc=txt_lookup(dns_server))
    assert got["b@example.com"].message["DKIM-Signature"] is None


@pytest.mark.parametrize("problem", ["missing", "not a key", "unreadable"])
def test_a_missing_or_unreadable_key_stops_the_worker_at_start(settings: Settings, tmp_path: Path, problem: str) -> None:
    key = tmp_path / "dkim.pem"
    if problem == "not a key":
        key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    elif problem == "unreadable":
        key.mkdir()  # exists, cannot be read as a file (the tests run as root, so no chmod trick)
    env = bare_env(settings, BEANMAIL_DKIM_KEY=str(key), BEANMAIL_DKIM_SELECTOR="s1")
    proc = beanmail("worker", "--burst", env=env, check=False)
    assert proc.returncode == 78, proc.stderr
    assert "BEANMAIL_DKIM_KEY" in proc.stderr and str(key) in proc.stderr
