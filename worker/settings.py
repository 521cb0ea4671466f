"""Settings: one object, read once from ``beanmail.toml`` plus ``BEANMAIL_*`` overrides, passed down.

supervisord starts programs with a bare environment, so every default here must work without
locale or HOME; a bad value fails at start with a message naming the setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from producer.beanstalk import split_urls
from producer.client import DEFAULT_TTR
from producer.config import ConfigError, read_table
from producer.envelope import MAIL_TUBES


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    tls: str  # "ssl" (smtps://), or STARTTLS mode: "required" | "opportunistic" | "off"
    user: str = ""
    password: str = ""


@dataclass(frozen=True)
class Settings:
    beanstalk_url: str = "beanstalk://127.0.0.1:11300"
    # paths are relative to the working directory (supervisord.conf runs programs in its own
    # folder), never to where the package is installed; load() makes them absolute
    templates: str = "templates"
    transport: str = "smtp"
    smtp_url: str = "smtp://127.0.0.1:1025"  # one relay, or several comma-separated: tried in order
    smtp_url_urgent: str = ""  # urgent mail's own relay(s); BEANMAIL_SMTP_URL's follow as fallbacks
    smtp_url_bulk: str = ""  # bulk mail's own relay(s); BEANMAIL_SMTP_URL's follow as fallbacks
    relay_retry_after: float = 30.0  # a dead relay (refused, timed out, 421) is skipped this long, then tried again
    relay_queue_command: str = ""  # prints the relay MTA's queue length (a number, or `postqueue -j` lines)
    relay_queue_high: int = 0  # the queue's high-water mark: at or above it bulk mail is held
    relay_queue_interval: float = 5.0  # seconds between runs of the queue command (per relay and process)
    relay_hold_delay: int = 30  # a held bulk job comes back this much later (no retry spent)
    relay_pace_max: float = 10000.0  # bulk messages/s per relay and worker process: AIMD's ceiling and start (never binds until the relay pushes back)
    relay_pace_min: float = 0.2  # the floor multiplicative decreases stop at
    relay_pace_step: float = 1.0  # additive increase: messages/s gained per second of clean bulk sending
    relay_latency_target: float = 1.0  # replies slower than the relay's own baseline by this much slow bulk down
    smtp_timeout: float = 30.0  # seconds per SMTP step
    smtp_data_timeout: float = 600.0  # the reply to the end of data (RFC 5321 4.5.3.2.6: 10 minutes)
    in_doubt_delay: int = 3600  # no reply after the data: retry (maybe a second copy) only this late
    greylist_delay: int = 300  # a greylisted recipient (451 4.7.1 greylisted) is tried again this late
    smtp_cafile: str = ""
    from_addr: str = "beanmail <noreply@localhost.localdomain>"
    helo_name: str = ""
    store: str = "var/beanmail.sqlite3"
    secret: str = ""
    spool: str = ""  # producers' spool file, flushed to beanstalkd at every worker start
    dns: str = ""
    dns_timeout: float = 5.0
    mx_port: int = 25
    mx_connections_per_domain: int = 2
    mx_fleet_connections_per_domain: int = 0  # connections per domain for the whole fleet; 0: no such cap
    rate_default: float = 0.0  # messages/s per recipient domain; 0 = no limit
    rate_limits: Mapping[str, float] = field(default_factory=dict)  # domain -> messages/s
    tubes: tuple[str, ...] = MAIL_TUBES
    ttr: int = DEFAULT_TTR
    max_attempts: int = 8
    backoff_base: float = 30.0
    backoff_max: float = 3600.0
    concurrency: int = 0  # deliveries in flight per worker process and server; 0: BEANMAIL_THREADS
    threads: int = 1  # the older name of concurrency, kept as its alias
    batch: int = 16  # jobs reserved in one round trip, claimed and recorded in one transaction
    reserve_timeout: int = 1
    host_name: str = ""  # this host in claims and the registry; the machine's name by default
    heartbeat: float = 5.0  # seconds between a worker's registry heartbeats
    lost_after: float = 60.0  # a worker silent this long is lost, and its claims released
    urgent_max_age: float = 60.0  # health: the oldest urgent job waiting longer makes status/healthz unhealthy
    beanstalk_timeout: float = 10.0
    mask_addresses: bool = True
    log_format: str = "json"
    unsubscribe_url: str = ""  # https://app.example/mail/unsubscribe (the UnsubscribeApp)
    unsubscribe_mailto: str = ""  # unsubscribe@app.example
    unsubscribe_secret: str = ""  # signs unsubscribe tokens; defaults to BEANMAIL_SECRET
    unsubscribe_days: float = 60.0  # how long an unsubscribe link works
    list_id: str = ""  # List-Id of bulk mail; default <template.from-domain>
    supervisor_url: str = "unix://var/supervisor.sock"
    web_listen: str = "127.0.0.1:8025"  # `beanmail web`: loopback unless a password is set
    web_password: str = ""  # HTTP basic auth for every console page but /healthz
    web_hosts: str = ""  # names the console answers to beside loopback's (Host header), comma-separated
    web_timeout: int = 10  # seconds a console connection may stay silent, or take to send its request
    entities: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # feedback (docs/feedback.md): DKIM, the VERP return path, bounces, the bulk brake
    dkim_key: str = ""  # PEM file(s), RSA or Ed25519, comma-separated; each signs every message whose From is in dkim_domain
    dkim_selector: str = ""  # one per key, in the same order
    dkim_domain: str = ""  # default: the From domain
    dkim_canonicalization: str = "relaxed/relaxed"  # header/body: relaxed or simple each
    return_path: str = ""  # bounces@example.org -> envelope sender bounces+TOKEN@example.org
    return_path_secret: str = ""  # signs VERP tokens; defaults to BEANMAIL_SECRET
    feedback_id: str = ""  # the sender id ending Gmail's Feedback-ID; default: the From domain
    bounce_mailbox: str = ""  # imaps://user:pass@host/INBOX for `beanmail bounces fetch`
    soft_bounce_limit: int = 5  # soft bounces of one address within the window that suppress it
    soft_bounce_window: float = 86400.0
    soft_suppression_days: float = 7.0  # how long soft bounces keep an address suppressed (urgent mail still goes)
    brake_window: int = 1000  # the last N bulk deliveries the brake judges; 0 turns it off
    brake_min_sends: int = 100  # fewer bulk deliveries than this are not judged
    brake_bounce_rate: float = 0.05
    brake_complaint_rate: float = 0.001
    # provider webhooks (worker/feedback/webhooks.py); relay_provider adds the header that carries
    # the VERP token back in the provider's events: sendgrid | postmark | mailgun | ses (none needed)
    relay_provider: str = ""
    ses_topic_arns: str = ""  # comma-separated SNS topic ARNs whose notifications are accepted
    sendgrid_webhook_key: str = ""  # the Event Webhook's verification key (base64 DER, ECDSA P-256)
    postmark_webhook_password: str = ""  # basic auth password on the webhook URL (Postmark signs nothing)
    mailgun_signing_key: str = ""  # HTTP webhook signing key (HMAC-SHA256)
    # digests and quiet hours (docs/digests.md)
    digest_hour: int = 8  # local hour daily and weekly digests go
    digest_weekday: str = "monday"  # the day weekly digests go
    digest_timezone: str = "UTC"  # for recipients whose preferences name none
    digest_group: str = "template"  # one digest per (recipient, template), or "recipient": one across templates
    digest_max_items: int = 50  # the newest N items of a digest; the rest are counted
    digest_interval: float = 60.0  # seconds between `beanmail digest run`'s looks for due periods
    quiet_hours: str = ""  # e.g. 22:00-07:00 for recipients whose preferences set none
    quiet_recheck: int = 3600  # a held job comes back at least this often (a changed preference)
    # delivery events for the application (docs/events.md, worker/events)
    events_url: str = ""  # where `beanmail events run` POSTs them; none: no event is queued
    events_secret: str = ""  # whsec_<base64>; a comma-separated list rotates: each signs, the header carries all
    events_types: str = ""  # comma-separated event types to deliver; none: every type
    events_tube: str = "events"
    events_max_age: float = 86400.0  # an event the endpoint did not take for this long is buried
    events_backoff_base: float = 5.0  # retry delay: base x 2^(attempt-1) seconds, to events_backoff_max
    events_backoff_max: float = 1800.0
    events_timeout: float = 10.0  # seconds one webhook request may take
    events_connections: int = 4  # kept-alive HTTP connections of one `beanmail events run`
    events_spool: str = "var/events.spool"  # events beanstalkd could not take; `events run` moves them on
    reply_domain: str = ""  # replies.example.org: notify(reply=True) sets Reply-To reply+TOKEN@ there
    reply_secret: str = ""  # signs reply tokens; defaults to BEANMAIL_SECRET; a comma-separated list rotates
    reply_ttl: float = 30 * 86400.0  # how long a reply address is accepted
    reply_mailbox: str = ""  # imaps://user:pass@host/INBOX for `beanmail inbound fetch`
    reply_authserv_id: str = ""  # the receiving MTA's Authentication-Results id(s) trusted for DKIM/DMARC
    sendgrid_inbound_key: str = ""  # Inbound Parse security policy's public key (base64 DER, ECDSA P-256)

    @property
    def dkim_signing_domain(self) -> str:
        return (self.dkim_domain or self.from_addr.rpartition("@")[2].rstrip(">").strip()).lower()

    @property
    def verp_secret(self) -> str:
        return self.return_path_secret or self.secret

    @property
    def smtp(self) -> SmtpTarget:
        """The first relay of BEANMAIL_SMTP_URL (normal mail's first choice)."""
        return parse_smtp_urls(self.smtp_url, "BEANMAIL_SMTP_URL")[0]

    @property
    def beanstalk_urls(self) -> list[str]:
        """One beanstalkd server, or a fleet's (comma-separated): workers reserve from each."""
        return split_urls(self.beanstalk_url)

    @property
    def token_secret(self) -> str:
        return self.unsubscribe_secret or self.secret

    @property
    def in_flight(self) -> int:
        """Deliveries in flight per process and server: BEANMAIL_CONCURRENCY, or its alias
        BEANMAIL_THREADS."""
        return self.concurrency or self.threads

    def rate_for(self, domain: str) -> float:
        return self.rate_limits.get(domain.lower(), self.rate_default)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes``, checked like settings read at start (a bad ``--tubes`` too)."""
        return validate(dataclasses.replace(self, **changes))


ENV_PREFIX = "BEANMAIL_"
# environment variable suffix (and TOML key) -> field, for names that differ
_ALIASES = {"FROM": "from_addr"}
# BEANMAIL_* variables that are not settings of this object but are read elsewhere
OTHER_VARIABLES = {"BEANMAIL_CONFIG", "BEANMAIL_WORKERS", "BEANMAIL_URGENT_WORKERS"}


def _warn(message: str) -> None:
    print(f"beanmail: warning: {message}", file=sys.stderr)


def variable_names() -> list[str]:
    return sorted({f"BEANMAIL_{_label(f.name)}" for f in fields(Settings) if f.name != "entities"} | OTHER_VARIABLES)


def _label(name: str) -> str:
    return {v: k for k, v in _ALIASES.items()}.get(name, name.upper())


def toml_keys() -> list[str]:
    return sorted(_label(f.name).lower() for f in fields(Settings))


def load(environ: Mapping[str, str] | None = None, path: str | None = None,
         warn: Any = _warn) -> Settings:
    """``warn`` is told of each BEANMAIL_* variable that names no setting (a typo would
    otherwise be ignored without a word)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    try:
        table, path = read_table(environ, path)  # the same file the producers read
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    values.update({_ALIASES.get(k.upper(), k): v for k, v in table.items()})
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(values) - set(known) - {"from"})
    if unknown:
        raise SettingsError(f"unknown setting(s) in {path}: {', '.join(unknown)}; "
                            f"the keys are: {', '.join(toml_keys())}")
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in OTHER_VARIABLES:
            continue
        suffix = key[len(ENV_PREFIX):]
        name = _ALIASES.get(suffix, suffix.lower())
        if name in known and name != "entities":
            values[name] = raw
        else:
            close = difflib.get_close_matches(key, variable_names(), n=1, cutoff=0.6)
            warn(f"{key} is not a beanmail setting and is ignored"
                 + (f"; did you mean {close[0]}?" if close else ""))
    settings = validate(_absolute(Settings(**{k: _coerce(k, known[k].type, v) for k, v in values.items()})))
    from . import identity

    identity.configure(settings.host_name)  # read once at start, as every setting
    from . import redact

    redact.remember(settings)  # its secrets never shown from now on: logs, errors, the console
    return settings


def _absolute(s: Settings) -> Settings:
    """Relative paths resolved once, against the folder the program started in."""
    changes: dict[str, str] = {"templates": os.path.abspath(s.templates)}
    if s.dkim_key:
        changes["dkim_key"] = ",".join(os.path.abspath(k.strip()) for k in s.dkim_key.split(",") if k.strip())
    if s.events_spool:
        changes["events_spool"] = os.path.abspath(s.events_spool)
    if "://" not in s.store and s.store != ":memory:":
        changes["store"] = os.path.abspath(s.store)
    if s.supervisor_url.startswith("unix://") and not s.supervisor_url.startswith("unix:///"):
        changes["supervisor_url"] = "unix://" + os.path.abspath(s.supervisor_url[len("unix://"):])
    return dataclasses.replace(s, **changes)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    label = f"BEANMAIL_{_label(name)}"
    try:
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if name == "tubes":
            tubes = value.split(",") if isinstance(value, str) else list(value)
            return tuple(t.strip() for t in tubes if t.strip())
        if name == "rate_limits":
            if isinstance(value, str):  # BEANMAIL_RATE_LIMITS="gmail.com=5,example.org=0.5"
                value = dict(item.split("=", 1) for item in value.split(",") if item.strip())
            return {str(k).strip().lower(): float(v) for k, v in dict(value).items()}
        if name == "entities":
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return value
        if name in ("dkim_key", "dkim_selector", "smtp_url", "smtp_url_urgent", "smtp_url_bulk") \
                and not isinstance(value, str):  # a TOML list
            return ",".join(str(item).strip() for item in value)
        if name in ("secret", "unsubscribe_secret", "events_secret", "reply_secret"):
            keys = value.split(",") if isinstance(value, str) else [str(k) for k in value]
            if value and not any(k.strip() for k in keys):
                raise SettingsError(f"{label}: names no key (a comma-separated list: the first signs, all verify)")
            return ",".join(k.strip() for k in keys if k.strip())
        return str(value)
    except SettingsError:
        raise
    except (TypeError, ValueError):
        raise SettingsError(f"{label}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


def parse_smtp_urls(value: str, variable: str = "BEANMAIL_SMTP_URL") -> list[SmtpTarget]:
    """A comma-separated list of relays, in the order they are tried (a comma inside a user name
    or password is written %2C). Raises SettingsError naming ``variable``."""
    urls = [u.strip() for u in value.split(",")]
    if not any(urls):
        raise SettingsError(f"{variable}: names no relay")
    if not all(urls):
        raise SettingsError(f"{variable}: an empty entry in {value!r} (relays are comma-separated)")
    targets = [parse_smtp_url(u, variable) for u in urls]
    seen = set()
    for url, t in zip(urls, targets):
        if (t.host, t.port) in seen:
            raise SettingsError(f"{variable}: {t.host}:{t.port} is listed twice")
        seen.add((t.host, t.port))
    return targets


def parse_smtp_url(url: str, variable: str = "BEANMAIL_SMTP_URL") -> SmtpTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise SettingsError(f"{variable}: {url!r} must start with smtp:// or smtps://")
    query = parse_qs(parts.query)
    if parts.scheme == "smtps":
        tls = "ssl"
    else:
        tls = query.get("starttls", ["opportunistic"])[0]
        if tls not in ("required", "opportunistic", "off"):
            raise SettingsError(f"{variable}: starttls must be required, opportunistic or off")
    try:
        port = parts.port or (465 if tls == "ssl" else 25)
    except ValueError:
        raise SettingsError(f"{variable}: bad port in {url!r}") from None
    if not parts.hostname:
        raise SettingsError(f"{variable}: no host in {url!r}")
    return SmtpTarget(parts.hostname, port, tls, unquote(parts.username or ""), unquote(parts.password or ""))


def validate(s: Settings) -> Settings:
    from email.utils import parseaddr

    try:
        split_urls(s.beanstalk_url)
    except ValueError as exc:
        raise SettingsError(f"BEANMAIL_BEANSTALK_URL: {exc}") from None
    if s.transport not in ("smtp", "mx"):
        raise SettingsError(f"BEANMAIL_TRANSPORT: must be smtp or mx, got {s.transport!r}")
    from .relays.plan import validate_relays

    validate_relays(s)
    if "@" not in parseaddr(s.from_addr)[1] or any(c in s.from_addr for c in "\r\n\0"):
        raise SettingsError(f"BEANMAIL_FROM: {s.from_addr!r} is not an address")
    from producer.addresses import AddressError, parse_mailbox

    try:
        parse_mailbox(s.from_addr)  # as a producer's address is judged (mime.sender_address reads it so)
    except AddressError as exc:
        raise SettingsError(f"BEANMAIL_FROM: {exc}") from None
    if s.dns:
        host, _, port = s.dns.rpartition(":") if s.dns.count(":") == 1 else (s.dns, "", "53")
        if not port.isdigit():
            raise SettingsError(f"BEANMAIL_DNS: {s.dns!r} must be ip[:port]")
    if not s.tubes:
        raise SettingsError("BEANMAIL_TUBES: no tube to watch")
    for name in ("ttr", "max_attempts", "mx_port", "mx_connections_per_domain", "threads", "smtp_timeout",
                 "smtp_data_timeout", "dns_timeout", "beanstalk_timeout", "backoff_base", "backoff_max",
                 "in_doubt_delay", "greylist_delay", "unsubscribe_days", "heartbeat", "lost_after", "urgent_max_age"):
        value = getattr(s, name)
        if not value > 0 or value != value or value == float("inf"):  # NaN and inf too
            raise SettingsError(f"BEANMAIL_{name.upper()}: must be a positive number, got {value!r}")
    if s.concurrency < 0 or s.concurrency > 10_000:
        raise SettingsError(f"BEANMAIL_CONCURRENCY: 1 to 10000 deliveries in flight, got {s.concurrency!r}")
    if s.concurrency and s.threads != 1 and s.threads != s.concurrency:
        raise SettingsError(f"BEANMAIL_CONCURRENCY ({s.concurrency}) and its older name BEANMAIL_THREADS"
                            f" ({s.threads}) disagree: set one")
    if not 1 <= s.batch <= 1000:
        raise SettingsError(f"BEANMAIL_BATCH: 1 to 1000 jobs per round trip, got {s.batch!r}")
    if s.mx_fleet_connections_per_domain < 0:
        raise SettingsError("BEANMAIL_MX_FLEET_CONNECTIONS_PER_DOMAIN: must be 0 (off) or more")
    if s.reserve_timeout < 0:
        raise SettingsError(f"BEANMAIL_RESERVE_TIMEOUT: must not be negative, got {s.reserve_timeout!r}")
    if s.ttr <= s.smtp_timeout:
        raise SettingsError(f"BEANMAIL_TTR: {s.ttr}s must exceed BEANMAIL_SMTP_TIMEOUT ({s.smtp_timeout}s)")
    if s.unsubscribe_url and not s.token_secret:
        raise SettingsError("BEANMAIL_UNSUBSCRIBE_SECRET: needed (or BEANMAIL_SECRET) to sign unsubscribe links")
    if s.unsubscribe_url and not s.unsubscribe_url.startswith(("https://", "http://")):
        raise SettingsError("BEANMAIL_UNSUBSCRIBE_URL: must be an http(s) URL")
    if not 1 <= s.web_timeout <= 3600:
        raise SettingsError(f"BEANMAIL_WEB_TIMEOUT: 1 to 3600 seconds, got {s.web_timeout!r}")
    if s.log_format not in ("json", "console"):
        raise SettingsError("BEANMAIL_LOG_FORMAT: must be json or console")
    _validate_feedback(s)
    _validate_digest(s)
    from .events.config import validate_events

    validate_events(s)
    return s


def _validate_feedback(s: Settings) -> None:
    """DKIM, VERP and brake settings; the key is loaded here so that a missing or unreadable
    one stops the program at start (78), not every message later."""
    from email.utils import parseaddr

    if s.dkim_key or s.dkim_selector or s.dkim_domain or s.dkim_canonicalization != "relaxed/relaxed":
        from .dkim import DkimSettingsError, Signer

        try:
            Signer.from_settings(s)  # every key read, the lists paired, the domain checked
        except DkimSettingsError as exc:
            raise SettingsError(str(exc)) from None
    if s.return_path:
        local, at, domain = parseaddr(s.return_path)[1].rpartition("@")
        if not at or not local or not domain or "+" in local or any(c in s.return_path for c in "\r\n\0 "):
            raise SettingsError(f"BEANMAIL_RETURN_PATH: {s.return_path!r} must be a plain address"
                                " such as bounces@example.org (no '+': the token goes there)")
        if not s.verp_secret:
            raise SettingsError("BEANMAIL_RETURN_PATH_SECRET: needed (or BEANMAIL_SECRET) to sign return paths")
    for name in ("soft_bounce_limit", "soft_bounce_window", "soft_suppression_days"):
        if not getattr(s, name) > 0:
            raise SettingsError(f"BEANMAIL_{name.upper()}: must be a positive number, got {getattr(s, name)!r}")
    if s.brake_window < 0 or s.brake_min_sends < 1:
        raise SettingsError("BEANMAIL_BRAKE_WINDOW must be 0 (off) or more, BEANMAIL_BRAKE_MIN_SENDS 1 or more")
    if s.relay_provider not in ("", "ses", "sendgrid", "postmark", "mailgun"):
        raise SettingsError(f"BEANMAIL_RELAY_PROVIDER: must be ses, sendgrid, postmark or mailgun, got {s.relay_provider!r}")
    if s.relay_provider and not s.verp_secret:
        raise SettingsError("BEANMAIL_RETURN_PATH_SECRET: needed (or BEANMAIL_SECRET) to sign the tokens webhooks bring back")
    for name in ("brake_bounce_rate", "brake_complaint_rate"):
        if not 0 < getattr(s, name) <= 1:
            raise SettingsError(f"BEANMAIL_{name.upper()}: must be a fraction in (0, 1], got {getattr(s, name)!r}")


def _validate_digest(s: Settings) -> None:
    from producer.prefs import parse_quiet, zone

    from .digest.periods import weekday

    if not 0 <= s.digest_hour <= 23:
        raise SettingsError(f"BEANMAIL_DIGEST_HOUR: an hour 0-23, got {s.digest_hour!r}")
    checks = (("digest_weekday", weekday), ("digest_timezone", zone), ("quiet_hours", lambda v: parse_quiet(v or None)))
    for name, check in checks:
        try:
            check(getattr(s, name))
        except ValueError as exc:
            raise SettingsError(f"BEANMAIL_{name.upper()}: {exc}") from None
    if s.digest_group not in ("template", "recipient"):
        raise SettingsError(f"BEANMAIL_DIGEST_GROUP: template or recipient, got {s.digest_group!r}")
    for name in ("digest_max_items", "digest_interval", "quiet_recheck"):
        if not getattr(s, name) > 0:
            raise SettingsError(f"BEANMAIL_{name.upper()}: must be a positive number, got {getattr(s, name)!r}")
