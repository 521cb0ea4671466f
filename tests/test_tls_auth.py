"""The relay's STARTTLS modes with certificate verification, implicit TLS, and AUTH, against
aiosmtpd with a certificate made here by openssl."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from producer import Notifier
from worker.settings import Settings
from worker.store import Store

from .conftest import run_burst
from .servers import SmtpServer


@pytest.fixture(params=[1, 2], ids=["blocking", "event-loop"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Each case through the blocking session and through the event loop's (BEANMAIL_CONCURRENCY)."""
    return settings.replace(concurrency=request.param)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    return context


def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"mailer", b"s3cr3t:/@")
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[SmtpServer]:
    server = SmtpServer(tls_context=server_context(certificate), require_starttls=True,
                        authenticator=authenticator, auth_require_tls=True).start()
    yield server
    server.stop()


def deliver(settings: Settings, key: str) -> tuple[str, str]:
    Notifier(settings.beanstalk_url).notify("welcome", "zoe@example.com", {"name": "x"}, key=key)
    run_burst(settings)
    row = Store(settings.store).deliveries(key=key)[0]
    return row.outcome, row.reason


def test_starttls_required_with_a_verified_certificate_and_auth(settings: Settings, tls_server: SmtpServer,
                                                                certificate: tuple[Path, Path]) -> None:
    s = settings.replace(smtp_url=f"smtp://mailer:s3cr3t%3A%2F%40@127.0.0.1:{tls_server.port}?starttls=required",
                         smtp_cafile=str(certificate[0]))
    assert deliver(s, "tls") == ("sent", "")
    [received] = tls_server.messages
    assert received.tls and received.login == b"mailer"


def test_an_unverifiable_certificate_defers(settings: Settings, tls_server: SmtpServer) -> None:
    s = settings.replace(smtp_url=f"smtp://127.0.0.1:{tls_server.port}?starttls=required")  # system CAs only
    outcome, reason = deliver(s, "unverified")
    assert outcome == "deferred" and "CERTIFICATE_VERIFY_FAILED" in reason
    assert tls_server.messages == []


def test_wrong_credentials_defer(settings: Settings, tls_server: SmtpServer, certificate: tuple[Path, Path]) -> None:
    s = settings.replace(smtp_url=f"smtp://mailer:wrong@127.0.0.1:{tls_server.port}?starttls=required",
                         smtp_cafile=str(certificate[0]))
    outcome, reason = deliver(s, "badauth")
    assert outcome == "deferred" and "AUTH failed" in reason


def test_starttls_required_but_not_offered_defers_and_opportunistic_sends(settings: Settings, smtp: SmtpServer) -> None:
    required = settings.replace(smtp_url=f"smtp://127.0.0.1:{smtp.port}?starttls=required")
    outcome, reason = deliver(required, "plain-required")
    assert outcome == "deferred" and "does not offer STARTTLS and it is required" in reason
    opportunistic = settings.replace(smtp_url=f"smtp://127.0.0.1:{smtp.port}?starttls=opportunistic")
    assert deliver(opportunistic, "plain-opportunistic")[0] == "sent"
    assert not smtp.messages[0].tls


def test_implicit_tls_smtps(settings: Settings, certificate: tuple[Path, Path]) -> None:
    from aiosmtpd.controller import Controller

    from .servers import _Handler, free_port

    handler, port = _Handler(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ssl_context=server_context(certificate))
    controller.start()
    try:
        s = settings.replace(smtp_url=f"smtps://127.0.0.1:{port}", smtp_cafile=str(certificate[0]))
        assert deliver(s, "smtps") == ("sent", "")
    finally:
        controller.stop()
    assert handler.messages[0].tls
